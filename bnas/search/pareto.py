"""The accuracy-cost Pareto front of a sweep of cost weights.

``bnas search --cost KIND --cost-weight 0,0.01,0.1,1 --save NAME`` runs one search per weight
(genotypes ``NAME_w0``, ``NAME_w0.01``, ...), then retrains every genotype it found, and the
architectures named for comparison (by default the shipped BNAS cells and a fixed binary
ResNet-20), on the same short budget at the size the cost counts (``--cost-layers``,
``--cost-init-channels``, ``--cost-image-size``; fixed networks at their own size). Each point
is that retraining's best validation top-1 against the network's cost (counted on the built
network as ``bnas show`` counts it). A point is on the front when no other point is at least as
accurate and at most as costly, and strictly better in one of the two.

The run directory holds ``front.md`` (the table), ``front.json`` and ``front.png`` (accuracy
against cost, searched genotypes and the compared architectures on the same axes), written
atomically, and one sub-directory per search and per retraining.
"""
from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import BnasError
from ..genotype import load
from ..model import build_model
from ..profiling import profile
from ..runio import atomic_write, atomic_write_text
from .config import resolve
from .cost import COST_KINDS, RetrainSize, parse_target

log = logging.getLogger("bnas.search")

#: Architectures placed on the axes beside the searched ones unless others are named.
DEFAULT_COMPARE = ("latest_cell", "latest_cell_zeroise", "resnet20_1w1a")
#: The retraining budget unless ``--front-train`` says otherwise: five epochs of batch 32 at a
#: peak learning rate of 0.0025 (the README's quick start: a freshly searched cell diverges
#: at BNAS's 0.05 on so short a schedule).
DEFAULT_TRAIN = {"epochs": 5, "batch_size": 32, "lr": 0.0025}
#: Search settings the retraining shares.
SHARED = ("dataset", "data", "binarizer", "binarizer_hparams", "device", "workers")


@dataclass
class Point:
    """One architecture on the axes."""

    name: str
    source: str
    cost: float
    top1: float
    weight: float | None = None
    genotype: str | None = None
    front: bool = False


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The points no other point dominates (at least as accurate and at most as costly, and
    better in one), by increasing cost."""
    def dominated(p: Point) -> bool:
        return any(q.top1 >= p.top1 and q.cost <= p.cost and (q.top1 > p.top1 or q.cost < p.cost)
                   for q in points)
    return sorted((p for p in points if not dominated(p)), key=lambda p: p.cost)


def sweep(overrides: dict[str, Any], weights: Sequence[float], *,
          compare: Sequence[str] = DEFAULT_COMPARE,
          train_settings: dict[str, Any] | None = None) -> tuple[list[Point], Path]:
    """Search once per weight, retrain everything, write the front (see the module docstring).
    ``overrides`` are search settings as :func:`bnas.search.config.resolve` takes them (``cost``
    required); returns the points and the run directory."""
    from ..train.config import resolve_config
    from ..train.engine import train
    from .loop import search

    base = resolve({**overrides, "cost_weight": weights[0]})
    if base.cost is None:
        raise BnasError("a sweep of --cost-weight needs --cost KIND")
    kind = COST_KINDS.get(base.cost)
    for name in compare:
        load(name)
    out = Path(base.out or f"runs/front-{base.save}-{time.strftime('%Y%m%d-%H%M%S')}").expanduser()
    size = RetrainSize.of(base.dataset, base.cost_layers, base.cost_init_channels,
                          base.cost_image_size)
    settings = {**DEFAULT_TRAIN, **(train_settings or {})}
    points: list[Point] = []

    def retrain(name: str, arch: str, cell: bool) -> float:
        shared = {k: getattr(base, k) for k in SHARED}
        sized = {"layers": size.layers, "init_channels": size.init_channels} if cell else {}
        cfg = resolve_config(None, {**shared, **settings, **sized, "arch": arch,
                                    "image_size": size.image_size, "progress": False,
                                    "out": str(out / f"train-{name}")})
        return float(train(cfg)["best_top1"])

    def cost_of(arch: str, cell: bool) -> float:
        sized = {"layers": size.layers, "init_channels": size.init_channels} if cell else {}
        model = build_model(arch, dataset=base.dataset, binarizer=base.binarizer,
                            **sized, **base.binarizer_hparams)
        return kind.network(model, size.input_size, profile(model, size.input_size))

    for weight in weights:
        name = f"{base.save}_w{weight:g}"
        found = search(resolve({**overrides, "cost_weight": weight, "save": name,
                                "out": str(out / f"search-{name}")}))
        path = str((found.out / f"{name}.json").resolve())
        points.append(Point(name, f"searched, weight {weight:g}",
                            found.genotype.provenance["cost"]["genotype_cost"],
                            retrain(name, path, True), weight, path))
    for name in compare:
        cell = load(name).kind == "cell"
        points.append(Point(name, "shipped cell" if cell else "fixed network",
                            cost_of(name, cell), retrain(name, name, cell), genotype=name))
    for point in pareto_front(points):
        point.front = True
    target = parse_target(base.cost_target) if base.cost_target else None
    write_front(out, points, kind.name, kind.format, size, target, settings)
    return points, out


def table(points: Sequence[Point], fmt, budget: float | None = None) -> str:
    """The front as a Markdown table, by increasing cost."""
    rows = ["| architecture | source | cost | val top-1 (%) | on the front |"
            + (" within budget |" if budget else ""),
            "|---|---|---|---|---|" + ("---|" if budget else "")]
    for p in sorted(points, key=lambda p: p.cost):
        row = f"| `{p.name}` | {p.source} | {fmt(p.cost)} | {p.top1:.2f} | {'yes' if p.front else ''} |"
        if budget:
            row += f" {'yes' if p.cost <= budget else 'no'} |"
        rows.append(row)
    return "\n".join(rows)


def write_front(out: Path, points: Sequence[Point], kind: str, fmt, size: RetrainSize,
                target, settings: dict[str, Any]) -> None:
    """``front.md``, ``front.json`` and ``front.png`` in ``out``."""
    budget = target.value if target else None
    heading = (f"Accuracy against {kind} ({size.dataset}; cells counted and retrained at "
               f"{size.layers} cells, C={size.init_channels}, {size.image_size}x{size.image_size}; "
               f"retraining: {', '.join(f'{k}={v}' for k, v in settings.items())})")
    atomic_write_text(out / "front.md", f"{heading}\n\n{table(points, fmt, budget)}\n")
    atomic_write_text(out / "front.json", json.dumps(
        {"kind": kind, "size": size.to_dict(), "train": settings,
         "target": target.text if target else None, "points": [asdict(p) for p in points]},
        indent=2) + "\n")
    atomic_write(out / "front.png", lambda f: f.write(plot(points, kind, fmt, heading, budget)))
    log.info("Pareto front written to %s (front.md, front.json, front.png)", out)


def plot(points: Sequence[Point], kind: str, fmt, title: str, budget: float | None) -> bytes:
    """Validation top-1 against cost (log scale), PNG bytes: searched genotypes as circles
    joined along the front, shipped cells as squares, fixed networks as triangles."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    styles = {"searched": ("o", "tab:blue"), "shipped cell": ("s", "tab:orange"),
              "fixed network": ("^", "tab:green")}
    for label, (marker, colour) in styles.items():
        group = [p for p in points if p.source.startswith(label)]
        if group:
            ax.scatter([p.cost for p in group], [p.top1 for p in group], marker=marker,
                       color=colour, label=label, zorder=3)
    front = pareto_front(points)
    ax.step([p.cost for p in front], [p.top1 for p in front], where="post", color="grey",
            linestyle="--", label="Pareto front", zorder=2)
    for p in points:
        ax.annotate(p.name, (p.cost, p.top1), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if budget:
        ax.axvline(budget, color="tab:red", linestyle=":", label=f"budget {fmt(budget)}")
    ax.set_xscale("log")
    ax.set_xlabel(f"{kind} (log scale)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(title, fontsize=7, wrap=True)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
