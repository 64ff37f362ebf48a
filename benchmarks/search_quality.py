"""Does the search beat chance? The NAS evaluation protocol on Fashion-MNIST, sized for a CPU.

NAS results are only meaningful against a random baseline retrained exactly like the searched
architectures (DARTS, Liu et al., ICLR 2019, Table 1; Li and Talwalkar, UAI 2019; Yang et al.,
"NAS Evaluation is Frustratingly Hard", ICLR 2020). Four groups and any search variants, one
identical recipe:

- ``searched``: ``bnas search`` with K seeds, each genotype retrained;
- ``random``: N genotypes drawn uniformly from the same space (``bnas search --strategy
  random``, :mod:`bnas.search.sample`);
- ``shipped``: BNAS's published CIFAR cell ``latest_cell_zeroise`` (BNAS-A's);
- ``fixed``: the hand-designed ``resnet20_1w1a`` (a network of similar size);
- ``searched+NAME``: a search variant, ``--variant NAME=KEY:VALUE[,KEY:VALUE...]`` (search
  settings such as the collapse controls of :mod:`bnas.search.collapse` or ``partial_channels``),
  K seeds searched and retrained exactly like ``searched``.

Every architecture is retrained with the ``fashion-mnist-cpu`` preset at the sizes given here,
with ``--train-seeds`` seeds, and scored by its final top-1 on (a subset of) the official test
set. The table gives per group the mean +- sample standard deviation over all its runs
(architectures x seeds) and the mean parameters and OPs (:mod:`bnas.profiling`) of its
networks, the share of parameter-free edges in their normal cells
(:mod:`bnas.search.collapse`) and, for searched groups, how far the search moved the alphas (the
mean over edges of the range of an edge's alphas; they start within 1e-3 of 0). The verdict says
whether the searched group's mean beats the random group's by more than the spread (the larger
of the two standard deviations), and how each variant compares with both.

Resumable: every finished run (a search, a draw, a retraining) is a JSON file in
``OUT/runs/``, written atomically, and is never redone; a killed search or retraining continues
from its checkpoint. ``OUT/protocol.json`` holds the settings, and another invocation must use
the same ones. Variants are kept apart in ``OUT/variants.json``: adding one to a finished run
adds its searches and retrainings and reuses every other cached result; a name keeps its
settings, and every later invocation runs the variants saved there. Several processes may
share one ``OUT`` (one per core): each claims a job with a lock file holding its process id (a
dead holder's lock is taken over), and ``--reverse`` starts a second one at the other end of
the plan (the last variant first). ``OUT/table.md`` and ``OUT/summary.json`` are
rewritten by whichever process ends last with every run done.

    nice python benchmarks/search_quality.py --out runs/search-quality --threads 1 &
    nice python benchmarks/search_quality.py --out runs/search-quality --threads 1 --reverse
    # later, the collapse controls on the same run (its other results are reused)
    nice python benchmarks/search_quality.py --out runs/search-quality --threads 1 \
        --variant arch-warmup=arch_warmup:1 --variant max-param-free=max_param_free:2
"""
from __future__ import annotations

import argparse
import json
import math
import re
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: Search settings a variant may not change: the protocol and its bookkeeping set them.
FIXED_SEARCH_SETTINGS = frozenset({"save", "strategy", "samples", "cost_band", "dataset", "data",
                                   "seed", "workers", "progress", "out", "genotype_dir",
                                   "overwrite"})
VARIANT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


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
    search_arch_lr: float = 3e-4
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
    needs: str | None = None  # the job whose result this one needs (its search or the draw)
    search: tuple[tuple[str, Any], ...] = ()  # a search variant's settings


def plan(p: Protocol, variants: dict[str, dict[str, Any]] | None = None) -> list[Job]:
    """The jobs of a protocol, in the order they run (every retraining after what it needs),
    then each search variant's searches and retrainings."""
    searches = [Job(f"search-s{k}", "search", "searched", f"searched_s{k}", k)
                for k in range(p.search_seeds)]
    jobs = [*searches, Job("draw", "draw")]
    jobs += _trains(p, [(s.group, s.arch, s.id) for s in searches]
                    + [("random", f"random_{i}", "draw") for i in range(p.random)]
                    + [("shipped", p.shipped, None), ("fixed", p.fixed, None)])
    for name, settings in (variants or {}).items():
        searches = [Job(f"search-{name}-s{k}", "search", f"searched+{name}",
                        f"searched-{name}_s{k}", k, search=tuple(settings.items()))
                    for k in range(p.search_seeds)]
        jobs += [*searches, *_trains(p, [(s.group, s.arch, s.id) for s in searches])]
    return jobs


def _trains(p: Protocol, archs: list[tuple[str, str, str | None]]) -> list[Job]:
    """The retrainings of ``(group, arch, needs)``, seed by seed."""
    return [Job(f"train-{arch}-t{seed}", "train", group, arch, seed, needs)
            for seed in range(p.train_seeds) for group, arch, needs in archs]


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME=KEY:VALUE[,KEY:VALUE...]``: a search variant's name and the search settings it
    changes (``bnas search``'s, with ``-`` or ``_``; values read as YAML)."""
    import yaml

    from bnas.errors import BnasError
    from bnas.search.config import FIELDS

    name, sep, spec = text.partition("=")
    if not sep or not VARIANT_NAME.match(name) or not spec:
        raise BnasError(f"--variant {text!r}: expected NAME=KEY:VALUE[,KEY:VALUE...], NAME in "
                        f"lower-case letters, digits and '-'")
    settings: dict[str, Any] = {}
    for item in spec.split(","):
        key, sep, value = item.partition(":")
        key = key.strip().replace("-", "_")
        if not sep or key in settings:
            raise BnasError(f"--variant {name}: expected KEY:VALUE items, each key once, got "
                            f"{item!r}")
        if key not in FIELDS or key in FIXED_SEARCH_SETTINGS:
            raise BnasError(f"--variant {name}: '{key}' is not a search setting a variant may "
                            f"change")
        try:
            settings[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise BnasError(f"--variant {name}: cannot read the value of {item!r}") from None
    return name, settings


# -- running ------------------------------------------------------------------------------------
def _write_json(path: Path, data: Any) -> None:
    from bnas.runio import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def search_config(job: Job, p: Protocol, out: Path) -> Any:
    """The search configuration of ``job``: the protocol's sizes, then its variant's settings."""
    from bnas.search import resolve

    return resolve({
        "dataset": p.dataset, "data": p.data, "image_size": p.search_image_size,
        "subset": p.search_subset, "layers": p.search_layers, "init_channels": p.search_channels,
        "epochs": p.search_epochs, "batch_size": p.search_batch, "arch_lr": p.search_arch_lr,
        **dict(job.search), "save": job.arch, "seed": job.seed, "workers": 0, "progress": False,
        "out": str(out / "search" / job.id), "genotype_dir": str(out / "genotypes"),
        "overwrite": True})


def _search(job: Job, p: Protocol, out: Path) -> dict[str, Any]:
    from bnas.run.checkpoint import CHECKPOINT
    from bnas.search.loop import search

    run_dir = out / "search" / job.id
    if (run_dir / CHECKPOINT).is_file():
        result = search(resume=run_dir)
    else:
        result = search(search_config(job, p, out))
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


def work(jobs: list[Job], p: Protocol, out: Path) -> list[dict[str, Any]]:
    """Run every job not cached yet (in passes, while any is runnable: not held by another
    process, its search or draw done); returns the cached results found."""
    runs = out / "runs"
    progress = True
    while progress:
        progress = False
        for job in jobs:
            cached, lock = runs / f"{job.id}.json", runs / f"{job.id}.lock"
            if cached.is_file() or (job.needs and not (runs / f"{job.needs}.json").is_file()):
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


def _mean_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def alpha_range(genotype: dict[str, Any]) -> float:
    """The mean over a searched genotype's edges (both cell types) of the range (max - min) of
    the edge's alphas, as saved in its provenance."""
    rows = [row for cell in genotype["provenance"]["alphas"].values() for row in cell]
    return sum(max(row) - min(row) for row in rows) / len(rows)


def describe(results: list[dict[str, Any]], out: Path) -> None:
    """Add to every retraining the parameter-free share of its normal cell (None for a fixed
    network) and, for a searched cell, its search's alpha range (:func:`alpha_range`)."""
    from bnas import genotype as G
    from bnas.search.collapse import parameter_free_share

    searched = {r["genotype"]["name"]: alpha_range(r["genotype"])
                for r in results if r.get("kind") == "search"}
    for r in results:
        if r.get("kind") != "train":
            continue
        path = out / "genotypes" / f"{r['arch']}.json"
        genotype = G.load(str(path) if path.is_file() else r["arch"])
        r["param_free"] = (parameter_free_share(genotype)["normal"] if genotype.kind == "cell"
                           else None)
        r["alpha_range"] = searched.get(r["arch"])


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per group, in the order the groups first appear: architectures, runs, mean and sample
    std of top-1, mean params and OPs, mean parameter-free share and alpha range (None where
    they do not apply or were not described)."""
    rows: dict[str, dict[str, Any]] = {}
    trains = [r for r in results if r.get("kind") == "train"]
    for group in dict.fromkeys(r["group"] for r in trains):
        runs = [r for r in trains if r["group"] == group]
        mean, std = _mean_std([r["top1"] for r in runs])
        rows[group] = {"archs": len({r["arch"] for r in runs}), "runs": len(runs),
                       "top1_mean": mean, "top1_std": std,
                       "params": sum(r["params"] for r in runs) / len(runs),
                       "ops": sum(r["ops"] for r in runs) / len(runs),
                       "param_free": _mean_or_none([r.get("param_free") for r in runs]),
                       "alpha_range": _mean_or_none([r.get("alpha_range") for r in runs])}
    return rows


def compare(rows: dict[str, dict[str, Any]], a: str, b: str) -> str:
    """Whether group ``a`` beats group ``b`` by more than the spread (the larger std)."""
    if a not in rows or b not in rows:
        return f"no verdict: the {a} and {b} groups are both needed"
    diff = rows[a]["top1_mean"] - rows[b]["top1_mean"]
    spread = max(rows[a]["top1_std"], rows[b]["top1_std"])
    if diff > spread:
        return f"{a} beats {b}: {diff:+.2f} points, more than the spread ({spread:.2f})"
    if -diff > spread:
        return f"{b} beats {a}: {diff:+.2f} points, more than the spread ({spread:.2f})"
    return f"{a} does not beat {b} beyond the spread: {diff:+.2f} points, spread {spread:.2f}"


def verdict(rows: dict[str, dict[str, Any]]) -> str:
    """Whether the searched group beats the random one by more than the spread; then each
    variant against the random and the searched group."""
    lines = [compare(rows, "searched", "random")]
    for group in rows:
        if group.startswith("searched+"):
            lines += [compare(rows, group, "random"), compare(rows, group, "searched")]
    return "\n".join(lines)


def table(rows: dict[str, dict[str, Any]]) -> str:
    """A Markdown table of :func:`summarise`'s rows."""
    def share(value: float | None, digits: int, scale: float = 1.0) -> str:
        return "-" if value is None else f"{value * scale:.{digits}f}"

    lines = ["| group | architectures | runs | test top-1 (%) | parameters | OPs "
             "| parameter-free normal edges (%) | alpha range |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for group, row in rows.items():
        lines.append(f"| {group} | {row['archs']} | {row['runs']} | {row['top1_mean']:.2f} +- "
                     f"{row['top1_std']:.2f} | {row['params']:,.0f} | {row['ops'] / 1e6:.2f} M "
                     f"| {share(row['param_free'], 0, 100)} | {share(row['alpha_range'], 3)} |")
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


def _check_variants(texts: list[str], p: Protocol, out: Path) -> dict[str, dict[str, Any]]:
    """The variants saved in ``OUT/variants.json`` and those given (each checked by resolving
    its search configuration); a saved name must keep its settings."""
    from bnas.errors import BnasError

    saved_path = out / "variants.json"
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else {}
    variants = dict(saved)
    for text in texts:
        name, settings = parse_variant(text)
        if variants.get(name, settings) != settings:
            raise BnasError(f"--variant {name}: {out} ran it with {variants[name]}; give another "
                            f"name")
        variants[name] = settings
        try:
            search_config(Job("check", "search", arch=f"searched-{name}_s0",
                              search=tuple(settings.items())), p, out)
        except BnasError as exc:
            raise BnasError(f"--variant {name}: {exc}") from None
    if variants != saved:
        _write_json(saved_path, variants)
    return variants


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/search-quality", help="results folder")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--reverse", action="store_true",
                        help="take the jobs from the end of the plan (a second process on the "
                             "same --out, for another core)")
    parser.add_argument("--variant", action="append", default=[],
                        metavar="NAME=KEY:VALUE[,KEY:VALUE...]",
                        help="a search variant, group searched+NAME (repeatable), e.g. "
                             "warmup=arch_warmup:2; saved in OUT/variants.json")
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
        variants = _check_variants(args.variant, p, out)
        jobs = plan(p, variants)
        results = work(jobs[::-1] if args.reverse else jobs, p, out)
        order = [j.id for j in jobs]
        results.sort(key=lambda r: order.index(r["id"]))
        describe(results, out)
    except BnasError as exc:
        print(f"search_quality: error: {exc}", file=sys.stderr)
        return 2
    rows = summarise(results)
    cpu = sum(r["cpu_seconds"] for r in results)
    wall = sum(r["seconds"] for r in results)
    report = "\n".join([table(rows), "", verdict(rows), "",
                        f"{len(results)} runs: {wall / 60:.1f} min wall-clock, {cpu / 60:.1f} "
                        f"CPU-min in the runs (this process: "
                        f"{resource.getrusage(resource.RUSAGE_SELF).ru_utime / 60:.1f})"])
    if len(results) < len(jobs):
        print(f"{len(results)} of {len(jobs)} runs done, the others run in another process "
              f"(the last to finish writes the table); so far:\n{report}")
        return 0
    _write_json(out / "summary.json", {"protocol": asdict(p), "variants": variants,
                                        "groups": rows, "verdict": verdict(rows), "runs": results})
    from bnas.runio import atomic_write_text

    atomic_write_text(out / "table.md", report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
