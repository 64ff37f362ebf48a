"""Does the search beat chance? The NAS evaluation protocol on Fashion-MNIST, sized for a CPU.

NAS results are only meaningful against a random baseline retrained exactly like the searched
architectures (DARTS, Liu et al., ICLR 2019, Table 1; Li and Talwalkar, UAI 2019; Yang et al.,
"NAS Evaluation is Frustratingly Hard", ICLR 2020). Four groups, one identical recipe:

- ``searched``: ``bnas search`` with K seeds, each genotype retrained;
- ``random``: N genotypes drawn uniformly from the same space (``bnas search --strategy
  random``, :mod:`bnas.search.sample`);
- ``shipped``: BNAS's published CIFAR cell ``latest_cell_zeroise`` (BNAS-A's);
- ``fixed``: the hand-designed ``resnet20_1w1a`` (a network of similar size).

Every architecture is retrained with the ``fashion-mnist-cpu`` preset at the sizes given here,
with ``--train-seeds`` seeds, and scored by its final top-1 on (a subset of) the official test
set. The table gives per group the mean +- sample standard deviation over all its runs
(architectures x seeds) and the mean parameters and OPs (:mod:`bnas.profiling`) of its
networks; the verdict says whether the searched group's mean beats the random group's by more
than the spread (the larger of the two standard deviations).

Resumable: every finished run (a search, a draw, a retraining) is a JSON file in
``OUT/runs/``, written atomically, and is never redone; a killed search or retraining continues
from its checkpoint. ``OUT/protocol.json`` holds the settings, and another invocation must use
the same ones. Several processes may share one ``OUT`` (one per core): each claims a job with a
lock file holding its process id (a dead holder's lock is taken over), and ``--reverse`` starts
a second one at the other end of the plan. ``OUT/table.md`` and ``OUT/summary.json`` are
rewritten by whichever process ends last with every run done.

    nice python benchmarks/search_quality.py --out runs/search-quality --threads 1 &
    nice python benchmarks/search_quality.py --out runs/search-quality --threads 1 --reverse
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GROUPS = ("searched", "random", "shipped", "fixed")


@dataclass(frozen=True)
class Protocol:
    """Every setting that decides the results (saved as ``OUT/protocol.json``)."""

    dataset: str = "fashion-mnist"
    data: str | None = None
    image_size: int = 16
    search_image_size: int = 8
    search_seeds: int = 2
    search_epochs: int = 3
    search_subset: int = 1280
    search_layers: int = 5
    search_channels: int = 8
    search_batch: int = 32
    random: int = 4
    train_seeds: int = 2
    layers: int = 5
    init_channels: int = 8
    epochs: int = 3
    train_subset: int = 2000
    val_subset: int = 2000
    shipped: str = "latest_cell_zeroise"
    fixed: str = "resnet20_1w1a"


@dataclass(frozen=True)
class Job:
    """One unit of work whose result is cached as ``OUT/runs/<id>.json``."""

    id: str
    kind: str  # search | draw | train
    group: str | None = None
    arch: str | None = None
    seed: int = 0


def plan(p: Protocol) -> list[Job]:
    """The jobs of a protocol, in the order they run (every retraining after what it needs)."""
    jobs = [Job(f"search-s{k}", "search", seed=k) for k in range(p.search_seeds)]
    jobs.append(Job("draw", "draw"))
    archs = ([("searched", f"searched_s{k}") for k in range(p.search_seeds)]
             + [("random", f"random_{i}") for i in range(p.random)]
             + [("shipped", p.shipped), ("fixed", p.fixed)])
    for seed in range(p.train_seeds):
        jobs += [Job(f"train-{arch}-t{seed}", "train", group, arch, seed) for group, arch in archs]
    return jobs


# -- running ------------------------------------------------------------------------------------
def _write_json(path: Path, data: Any) -> None:
    from bnas.runio import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def _search(job: Job, p: Protocol, out: Path) -> dict[str, Any]:
    from bnas.search import resolve
    from bnas.run.checkpoint import CHECKPOINT
    from bnas.search.loop import search

    run_dir = out / "search" / job.id
    if (run_dir / CHECKPOINT).is_file():
        result = search(resume=run_dir)
    else:
        result = search(resolve({
            "save": f"searched_s{job.seed}", "dataset": p.dataset, "data": p.data,
            "image_size": p.search_image_size, "subset": p.search_subset, "layers": p.search_layers,
            "init_channels": p.search_channels, "epochs": p.search_epochs,
            "batch_size": p.search_batch, "seed": job.seed, "workers": 0, "progress": False,
            "out": str(run_dir), "genotype_dir": str(out / "genotypes"), "overwrite": True}))
    return {"genotype": result.genotype.to_json(), "best_epoch": result.best_epoch + 1,
            "search_val_top1": result.best_top1}


def _draw(p: Protocol, out: Path) -> dict[str, Any]:
    from bnas import genotype as G
    from bnas.search import resolve
    from bnas.search.sample import draw

    cfg = resolve({"strategy": "random", "samples": p.random, "save": "random",
                   "dataset": p.dataset, "seed": 0, "genotype_dir": str(out / "genotypes")})
    genotypes = draw(cfg)
    for genotype in genotypes:
        G.save(genotype, cfg.genotype_path(genotype.name))
    return {"genotypes": [g.to_json() for g in genotypes]}


def _cost(arch: str, p: Protocol, cell: bool) -> dict[str, float]:
    from bnas.model import build_model
    from bnas.profiling import profile

    sizes = {"layers": p.layers, "init_channels": p.init_channels} if cell else {}
    found = profile(build_model(arch, dataset=p.dataset, **sizes), (3, p.image_size, p.image_size))
    return {"params": found.params, "ops": found.ops}


def _train(job: Job, p: Protocol, out: Path) -> dict[str, Any]:
    from bnas import genotype as G
    from bnas.run.checkpoint import CHECKPOINT
    from bnas.train import resolve_config, train

    path = out / "genotypes" / f"{job.arch}.json"
    arch = str(path) if path.is_file() else job.arch
    cell = G.load(arch).kind == "cell"
    run_dir = out / "train" / job.id
    overrides = {"arch": arch, "dataset": p.dataset, "data": p.data, "image_size": p.image_size,
                 "epochs": p.epochs, "train_subset": p.train_subset, "val_subset": p.val_subset,
                 "seed": job.seed, "progress": False, "out": str(run_dir),
                 "resume": (run_dir / CHECKPOINT).is_file()}
    if cell:
        overrides.update(layers=p.layers, init_channels=p.init_channels)
    result = train(resolve_config("fashion-mnist-cpu", overrides))
    return {"group": job.group, "arch": job.arch, "train_seed": job.seed,
            "top1": result["last_top1"], "best_top1": result["best_top1"],
            **_cost(arch, p, cell)}


def run_job(job: Job, p: Protocol, out: Path) -> dict[str, Any]:
    """Run ``job`` and return its result (with its wall-clock and CPU seconds)."""
    started, cpu = time.perf_counter(), time.process_time()
    if job.kind == "search":
        result = _search(job, p, out)
    elif job.kind == "draw":
        result = _draw(p, out)
    else:
        result = _train(job, p, out)
    return {"id": job.id, "kind": job.kind, **result,
            "seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(time.process_time() - cpu, 1)}


def _claim(lock: Path) -> bool:
    """Take the job whose lock file this is, unless a live process holds it."""
    import os

    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            holder = int(lock.read_text() or 0)
            os.kill(holder, 0)
            return False  # another worker runs it
        except (ValueError, ProcessLookupError):  # left by a killed worker: take it over
            lock.write_text(str(os.getpid()))
            return True
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def _needs(job: Job) -> str | None:
    """The job whose result a retraining needs (its search or the draw)."""
    if job.kind != "train" or job.group not in ("searched", "random"):
        return None
    return f"search-s{job.arch.rsplit('_s', 1)[1]}" if job.group == "searched" else "draw"


def work(jobs: list[Job], p: Protocol, out: Path) -> list[dict[str, Any]]:
    """Run every job not cached yet (in passes, while any is runnable: not held by another
    process, its search or draw done); returns the cached results found."""
    runs = out / "runs"
    progress = True
    while progress:
        progress = False
        for job in jobs:
            cached, lock = runs / f"{job.id}.json", runs / f"{job.id}.lock"
            need = _needs(job)
            if cached.is_file() or (need and not (runs / f"{need}.json").is_file()):
                continue
            if not _claim(lock):
                continue
            print(f"running {job.id}", flush=True)
            try:
                _write_json(cached, run_job(job, p, out))
            finally:
                lock.unlink(missing_ok=True)
            progress = True
    return [json.loads((runs / f"{j.id}.json").read_text()) for j in jobs
            if (runs / f"{j.id}.json").is_file()]


# -- aggregation --------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per group: architectures, runs, mean and sample std of top-1, mean params and OPs."""
    rows: dict[str, dict[str, Any]] = {}
    for group in GROUPS:
        runs = [r for r in results if r.get("kind") == "train" and r["group"] == group]
        if not runs:
            continue
        mean, std = _mean_std([r["top1"] for r in runs])
        rows[group] = {"archs": len({r["arch"] for r in runs}), "runs": len(runs),
                       "top1_mean": mean, "top1_std": std,
                       "params": sum(r["params"] for r in runs) / len(runs),
                       "ops": sum(r["ops"] for r in runs) / len(runs)}
    return rows


def verdict(rows: dict[str, dict[str, Any]]) -> str:
    """Whether the searched group beats the random one by more than the spread."""
    if "searched" not in rows or "random" not in rows:
        return "no verdict: the searched and random groups are both needed"
    s, r = rows["searched"], rows["random"]
    diff = s["top1_mean"] - r["top1_mean"]
    spread = max(s["top1_std"], r["top1_std"])
    if diff > spread:
        return (f"searched beats random: {diff:+.2f} points, more than the spread "
                f"({spread:.2f})")
    if -diff > spread:
        return f"random beats searched: {diff:+.2f} points, more than the spread ({spread:.2f})"
    return (f"searched does not beat random beyond the spread: {diff:+.2f} points, spread "
            f"{spread:.2f}")


def table(rows: dict[str, dict[str, Any]]) -> str:
    """A Markdown table of :func:`summarise`'s rows."""
    lines = ["| group | architectures | runs | test top-1 (%) | parameters | OPs |",
             "|---|---:|---:|---|---:|---:|"]
    for group, row in rows.items():
        lines.append(f"| {group} | {row['archs']} | {row['runs']} | {row['top1_mean']:.2f} +- "
                     f"{row['top1_std']:.2f} | {row['params']:,.0f} | {row['ops'] / 1e6:.2f} M |")
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------
def _protocol(args: argparse.Namespace) -> Protocol:
    return Protocol(**{k: getattr(args, k) for k in asdict(Protocol())})


def _check_protocol(p: Protocol, out: Path) -> None:
    from bnas.errors import BnasError

    saved = out / "protocol.json"
    if saved.is_file():
        previous = json.loads(saved.read_text())
        if previous != asdict(p):
            changed = sorted(k for k in asdict(p) if previous.get(k) != asdict(p)[k])
            raise BnasError(f"{out} holds a run with other settings ({', '.join(changed)}); "
                            f"use another --out")
    else:
        _write_json(saved, asdict(p))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/search-quality", help="results folder")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--reverse", action="store_true",
                        help="take the jobs from the end of the plan (a second process on the "
                             "same --out, for another core)")
    for name, value in asdict(Protocol()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=value,
                            type=type(value) if value is not None else str)
    args = parser.parse_args(argv)
    import torch

    from bnas.errors import BnasError

    torch.set_num_threads(args.threads)
    out = Path(args.out).expanduser()
    p = _protocol(args)
    try:
        _check_protocol(p, out)
        results = work(plan(p)[::-1] if args.reverse else plan(p), p, out)
    except BnasError as exc:
        print(f"search_quality: error: {exc}", file=sys.stderr)
        return 2
    order = [j.id for j in plan(p)]
    results.sort(key=lambda r: order.index(r["id"]))
    rows = summarise(results)
    cpu = sum(r["cpu_seconds"] for r in results)
    wall = sum(r["seconds"] for r in results)
    report = "\n".join([table(rows), "", verdict(rows), "",
                        f"{len(results)} runs: {wall / 60:.1f} min wall-clock, {cpu / 60:.1f} "
                        f"CPU-min in the runs (this process: "
                        f"{resource.getrusage(resource.RUSAGE_SELF).ru_utime / 60:.1f})"])
    if len(results) < len(plan(p)):
        print(f"{len(results)} of {len(plan(p))} runs done, the others run in another process "
              f"(the last to finish writes the table); so far:\n{report}")
        return 0
    _write_json(out / "summary.json", {"protocol": asdict(p), "groups": rows,
                                        "verdict": verdict(rows), "runs": results})
    from bnas.runio import atomic_write_text

    atomic_write_text(out / "table.md", report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
