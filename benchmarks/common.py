"""What the benchmark scripts share: one fresh process per workload (so that each peak resident
memory is its own), started with the allocator settings the ``bnas`` program uses
(:func:`bnas.allocator.tuned_environment`), the command line, and ratios against the reference
figures."""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def parser(description: str, steps: int) -> argparse.ArgumentParser:
    """``--steps``, ``--threads`` and ``--only``, plus the hidden ``--child`` of a workload process."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--steps", type=int, default=steps, help="timed steps per workload")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--only", help="run the workloads whose name contains this text")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    return p


def rss_gb() -> float:
    """This process's resident memory now, in GB (2**30 bytes)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1024**3


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB (2**30 bytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def ratio(ours: float, reference: float | None) -> str:
    """`` (0.45x ref)``: ours over the reference's figure (empty without one)."""
    return "" if reference is None else f" ({ours / reference:.2f}x ref)"


def child_environment() -> dict[str, str]:
    """The environment ``bnas search`` / ``bnas train`` run with (tcmalloc where installed,
    else huge pages for glibc's allocator; ``BNAS_ALLOCATOR`` chooses, as for the program)."""
    from bnas.allocator import tuned_environment

    return tuned_environment(os.environ) or dict(os.environ)


def run(script: str, args: argparse.Namespace, names: Sequence[str], header: str,
        measure: Callable[[int], dict[str, Any]], row: Callable[[int, dict[str, Any]], str],
        skip: Callable[[int], bool] = lambda index: False,
        settings: Callable[[], Sequence[str]] = tuple,
        variables: Callable[[int], Mapping[str, str]] = lambda index: {}) -> int:
    """In a child (``--child I``): print workload I's measurements as JSON. Otherwise run each
    workload that ``--only`` selects and ``skip`` keeps in a child process of ``script`` (its
    environment with workload I's ``variables`` added), and print the allocator, the lines of
    ``settings``, ``header`` and one ``row`` per workload."""
    if args.child is not None:
        print(json.dumps(measure(args.child)))
        return 0
    from bnas.allocator import describe

    environment = child_environment()
    print(f"allocator: {describe(environment)} (BNAS_ALLOCATOR chooses)", flush=True)
    for line in settings():
        print(line, flush=True)
    print(header, flush=True)
    for index, name in enumerate(names):
        if (args.only and args.only not in name) or skip(index):
            continue
        proc = subprocess.run([sys.executable, script, "--child", str(index), "--steps",
                               str(args.steps), "--threads", str(args.threads)],
                              capture_output=True, text=True,
                              env={**environment, **variables(index)})
        if proc.returncode:
            lines = proc.stderr.strip().splitlines() or ["no output"]
            print(f"{name:48} failed: {lines[-1]}", flush=True)
            continue
        print(row(index, json.loads(proc.stdout.strip().splitlines()[-1])), flush=True)
    return 0
