"""Loss and accuracy accumulated on the device, and the run's metric files.

``metrics.jsonl`` gets one JSON object per epoch; TensorBoard event files are written next to
it when the ``tensorboard`` package is installed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..runio import atomic_write_text
from .context import Context


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """How many rows have ``target`` among their ``k`` largest logits, for each ``k`` (capped
    at the number of classes)."""
    kmax = min(max(ks), logits.size(1))
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(target.unsqueeze(1))
    return [hits[:, :min(k, kmax)].any(dim=1).sum() for k in ks]


class Meter:
    """Sums of loss, top-1 and top-5 hits and samples, kept on the device (no sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        n = target.size(0)
        top1, top5 = topk_correct(logits, target)
        self.sums += torch.stack([loss.detach().double() * n, top1.double(), top5.double(),
                                  torch.tensor(float(n), dtype=torch.float64, device=loss.device)])

    def result(self, ctx: Context | None = None) -> dict[str, float]:
        """Mean loss and accuracies (in %), over all processes when ``ctx`` is given."""
        sums = self.sums.clone()
        if ctx is not None:
            ctx.all_reduce_sum(sums)
        loss, top1, top5, n = sums.tolist()
        n = max(n, 1.0)
        return {"loss": loss / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n,
                "samples": int(n)}


class MetricsLog:
    """Appends epoch records to ``metrics.jsonl`` (and TensorBoard, when available)."""

    def __init__(self, out: Path, enabled: bool = True) -> None:
        self.path = out / "metrics.jsonl"
        self.enabled = enabled
        self.writer = _tensorboard(out) if enabled else None

    def truncate(self, before_epoch: int) -> None:
        """Forget records of epochs ``>= before_epoch`` (a resumed run writes them again)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("epoch", 0) < before_epoch]
        atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _tensorboard(out: Path) -> Any:
    """A SummaryWriter on ``out/tensorboard``, or None without the tensorboard package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"))
