"""What a search writes into its run directory, epoch by epoch.

- ``alphas.jsonl``: per epoch, ``softmax(alpha)`` of each cell type (rows: edges in
  :func:`bnas.search.topology.edges` order; columns: the space's operations);
- ``genotypes.jsonl``: per epoch, the validation metrics and the derived genotypes (CIFAR and,
  with ``gamma``, ImageNet);
- ``alphas_normal.png``, ``alphas_reduce.png``: how the weights evolved, one heatmap per cell
  type (a row per edge and operation, a column per epoch), redrawn every epoch.

A resumed run first drops the records of the epochs it is about to repeat.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..runio import atomic_write_text
from . import topology

FILES = ("alphas.jsonl", "genotypes.jsonl")


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class SearchRecord:
    """Appends the per-epoch records of a search to its run directory."""

    def __init__(self, out: Path, op_names: list[str], steps: int, enabled: bool = True) -> None:
        self.out, self.op_names, self.steps, self.enabled = out, list(op_names), steps, enabled

    def truncate(self, before_epoch: int) -> None:
        """Forget records of epochs ``>= before_epoch``."""
        if not self.enabled:
            return
        for name in FILES:
            kept = [r for r in _read(self.out / name) if r["epoch"] < before_epoch]
            atomic_write_text(self.out / name, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, epoch: int, weights: dict[str, torch.Tensor], genotypes: dict[str, Any],
              metrics: dict[str, Any]) -> None:
        """Record epoch ``epoch`` (0-based) and redraw the heatmaps."""
        if not self.enabled:
            return
        alphas = {"epoch": epoch, **{k: w.tolist() for k, w in weights.items()}}
        with open(self.out / "alphas.jsonl", "a") as f:
            f.write(json.dumps(alphas) + "\n")
        with open(self.out / "genotypes.jsonl", "a") as f:
            f.write(json.dumps({"epoch": epoch, **metrics,
                                **{k: g.to_json() for k, g in genotypes.items()}}) + "\n")
        self.draw()

    def draw(self) -> None:
        """One heatmap per cell type from ``alphas.jsonl``, with the share of parameter-free
        edges of the derived cell per epoch (``genotypes.jsonl``) under it."""
        history = _read(self.out / "alphas.jsonl")
        if not history:
            return
        records = {r["epoch"]: r for r in _read(self.out / "genotypes.jsonl")}
        for cell_type in ("normal", "reduce"):
            frames = torch.tensor([r[cell_type] for r in history])  # (epochs, edges, ops)
            shares = [records.get(r["epoch"], {}).get("parameter_free", {}).get(cell_type)
                      for r in history]
            plot_history(frames, [r["epoch"] for r in history], self.op_names, self.steps,
                         self.out / f"alphas_{cell_type}.png", f"{cell_type} cell: softmax(alpha)",
                         shares)


def plot_history(frames: torch.Tensor, epochs: list[int], op_names: list[str], steps: int,
                 path: Path, title: str, shares: list[float | None] | None = None) -> None:
    """Heatmap of ``frames`` ``(epochs, edges, ops)``: a row per (edge, op), a column per epoch;
    under it, ``shares`` (the derived cell's share of parameter-free edges) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_epochs, n_edges, n_ops = frames.shape
    table = frames.permute(1, 2, 0).reshape(n_edges * n_ops, n_epochs).numpy()
    labels = [f"{j}->{node} {op}" for node, j in topology.edges(steps) for op in op_names]
    fig, (ax, below) = plt.subplots(
        2, 1, figsize=(2.5 + 0.25 * min(n_epochs, 60), 3 + 0.12 * len(labels)), sharex=True,
        gridspec_kw={"height_ratios": [0.12 * len(labels), 1.0]})
    known = [(i, s) for i, s in enumerate(shares or []) if s is not None]
    below.plot([i for i, _ in known], [100 * s for _, s in known], marker="o", markersize=3)
    below.set_ylim(-5, 105)
    below.set_ylabel("param-free\nedges %", fontsize=6)
    below.tick_params(labelsize=6)
    image = ax.imshow(table, aspect="auto", interpolation="nearest", cmap="viridis",
                      vmin=float(table.min()), vmax=max(float(table.max()), float(table.min()) + 1e-6))
    ax.set_yticks(range(len(labels)), labels, fontsize=5)
    ticks = list(range(0, n_epochs, max(1, n_epochs // 10)))
    below.set_xticks(ticks, [str(epochs[i] + 1) for i in ticks], fontsize=7)
    below.set_xlabel("epoch")
    for row in range(n_ops, len(labels), n_ops):
        ax.axhline(row - 0.5, color="white", linewidth=0.4)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
