#!/usr/bin/env python
"""Training-step speed and memory of ``bnas train``'s engine, next to the reference figures.

    python benchmarks/train_step.py                 # every workload, 2 threads
    python benchmarks/train_step.py --only bnas-a --steps 8

Each workload runs in a fresh process (so that its peak resident memory is its own): the
engine's own :meth:`bnas.train.Trainer.train_step` (forward, backward, the scheme's gradient
rules, optimizer step) on synthetic CIFAR-shaped batches, data loading excluded, with
``torch.set_num_threads(threads)``; the median of ``--steps`` steps after two warm-up steps.
The reference figures are those of ``benchmarks.md`` (the authors' code on the same kind of
2-core machine); machines are noisy, so compare medians measured side by side.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Workload:
    """A model, a scheme and a batch size, with the reference's step time and memory."""

    name: str
    settings: dict[str, Any]
    batch: int
    drop_path: float = 0.0
    reference_s: float | None = None
    reference_gb: float | None = None
    reference_images_per_s: float | None = None


def workloads() -> list[Workload]:
    bnas_a = {"config": "bnas-a"}
    cell36 = {"arch": "latest_cell", "layers": 20, "init_channels": 36}
    items = [
        Workload("bnas-a (latest_cell_zeroise C=36 L=20, plain)", bnas_a, 32, 0.2, 3.25, 2.7),
        Workload("latest_cell C=36 L=20 (plain)", cell36, 32, 0.2, 6.87, 3.6),
    ]
    reference_rates = {"rbnn": 178.0, "recu": 208.0, "siman": 198.0}
    from bnas.binarize import names

    for scheme in names():
        items.append(Workload(f"resnet20_1w1a {scheme}", {"arch": "resnet20_1w1a", "binarizer": scheme},
                              128, reference_images_per_s=reference_rates.get(scheme),
                              reference_gb=1.35 if scheme in reference_rates else None))
    return items


def measure(workload: Workload, steps: int, threads: int) -> dict[str, float]:
    """Median step time and peak RSS of ``workload`` in this process."""
    import torch

    from bnas.train import Trainer, resolve_config
    from bnas.train.distributed import Context

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as out:
        cfg = resolve_config(None, {**workload.settings, "dataset": "synthetic", "epochs": 1,
                                    "batch_size": workload.batch, "workers": 0, "progress": False,
                                    "out": out, "device": "cpu"})
        trainer = Trainer(cfg, Context())
        model = trainer.model
        model.binarizer.set_epoch(model, 0, cfg.epochs)
        if hasattr(model, "drop_path_prob"):
            model.drop_path_prob = workload.drop_path
        trainer.net.train()
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(workload.batch, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (workload.batch,), generator=gen)
        times = []
        for step in range(steps + 2):
            started = time.perf_counter()
            model.binarizer.before_batch(model, 0, step)
            trainer.scheduler.step(0, 0)
            trainer.train_step(x, y)
            times.append(time.perf_counter() - started)
        trainer.close()
    median = statistics.median(times[2:])
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return {"step_s": median, "peak_gb": peak_gb, "images_per_s": workload.batch / median}


def _ratio(ours: float, reference: float | None) -> str:
    """`` (0.45x ref)``: ours over the reference's figure."""
    return "" if reference is None else f" ({ours / reference:.2f}x ref)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per workload")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--only", help="run the workloads whose name contains this text")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    items = workloads()
    if args.child is not None:
        print(json.dumps(measure(items[args.child], args.steps, args.threads)))
        return 0
    print(f"{'workload':48} {'batch':>5} {'step s':>16} {'img/s':>18} {'peak GB':>16}")
    for index, w in enumerate(items):
        if args.only and args.only not in w.name:
            continue
        proc = subprocess.run([sys.executable, __file__, "--child", str(index), "--steps",
                               str(args.steps), "--threads", str(args.threads)],
                              capture_output=True, text=True)
        if proc.returncode:
            print(f"{w.name:48} failed: {proc.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{w.name:48} {w.batch:5d} {r['step_s']:7.3f}{_ratio(r['step_s'], w.reference_s):>9} "
              f"{r['images_per_s']:7.1f}{_ratio(r['images_per_s'], w.reference_images_per_s):>11} "
              f"{r['peak_gb']:6.2f}{_ratio(r['peak_gb'], w.reference_gb):>10}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
