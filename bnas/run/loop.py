"""The epoch loop every run shares (search and training; tuning drives both).

:class:`EpochRun` owns what a run does the same way whatever it trains: the epoch loop with its
progress line, the binarizer's hooks (``set_epoch`` per epoch, ``before_batch`` per step), the
learning-rate schedule applied before every step, the running loss and accuracy, the BatchNorm
buffers given to every process before validation, the validation pass, and the ``on_epoch_end``
callback. A run supplies its :meth:`~EpochRun.step` (one optimisation step on a batch), its
:meth:`~EpochRun.end_epoch` (records and checkpoint) and its :meth:`~EpochRun.result`, and may
extend :meth:`~EpochRun.begin_epoch`.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .context import Context
from .metrics import Meter
from .progress import Progress
from .rundir import detach_run_log
from .schedules import LrScheduler

#: ``on_epoch_end(epoch, metrics)``: called by a search or a training run after each epoch.
EpochCallback = Callable[[int, dict[str, Any]], None]


@torch.no_grad()
def validate(model: nn.Module, loader: Iterable[Any], ctx: Context, channels_last: bool = False,
             autocast: AbstractContextManager | None = None) -> dict[str, float]:
    """Loss (plain cross-entropy), top-1 and top-5 of ``model`` in eval mode over ``loader``,
    summed over all processes."""
    model.eval()
    meter = Meter(ctx.device)
    for x, y in loader:
        x, y = ctx.to_device(x, y, channels_last)
        with autocast or nullcontext():
            logits = model(x)
        meter.update(F.cross_entropy(logits.float(), y), logits, y)
    return meter.result(ctx)


class EpochRun:
    """A run of epochs; subclasses set the attributes below in their ``__init__``.

    ``ctx`` (the process), ``log`` and ``handlers`` (the run log, see
    :func:`bnas.run.rundir.attach_run_log`), ``model`` (the network, with its ``binarizer``),
    ``net`` (``model`` or its DistributedDataParallel wrapper), ``train_loader`` and
    ``val_loader``, ``scheduler`` (the learning rate of ``optimizer``), ``epochs``,
    ``start_epoch`` and ``progress`` (whether to draw the progress line); ``print_freq`` (log
lines during an epoch) is optional.
    """

    ctx: Context
    log: logging.Logger
    handlers: list[logging.Handler]
    model: nn.Module
    net: nn.Module
    train_loader: Any
    val_loader: Any
    scheduler: LrScheduler
    epochs: int
    start_epoch: int
    progress: bool
    channels_last: bool = False
    #: log the running loss and top-1 every this many training batches (0: never)
    print_freq: int = 0

    # -- what a run supplies ------------------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor, epoch: int,
             batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on a batch; returns the (detached) loss and logits."""
        raise NotImplementedError

    def end_epoch(self, epoch: int, train: dict[str, float], val: dict[str, float],
                  seconds: float) -> dict[str, Any]:
        """Records, checkpoint and log line after ``epoch``; returns the epoch's metrics (what
        ``on_epoch_end`` receives)."""
        raise NotImplementedError

    def epoch_loaders(self) -> list[Any]:
        """The loaders whose order and augmentation are reseeded for each epoch."""
        return [self.train_loader]

    def begin_epoch(self, epoch: int) -> None:
        """Before the epoch's first step: the binarizer's schedules."""
        self.model.binarizer.set_epoch(self.model, epoch, self.epochs)

    def autocast(self) -> AbstractContextManager | None:
        """The mixed-precision context of forward passes, or None."""
        return None

    def close(self) -> None:
        """Release what the run holds open (the log)."""
        detach_run_log(self.log, self.handlers)
        self.handlers = []

    def result(self) -> Any:
        """What the run returns once its epochs are done."""
        raise NotImplementedError

    def stopped(self) -> bool:
        """Whether the run ends before its last epoch (an early-stopping rule); checked before
        every epoch, so a resumed run that had stopped stays stopped."""
        return False

    # -- the loop -----------------------------------------------------------------------------
    def run(self, on_epoch_end: EpochCallback | None = None) -> Any:
        """Train, validate and end every remaining epoch, then :meth:`result`; the run is closed
        in any case. ``on_epoch_end(epoch, metrics)`` follows each :meth:`end_epoch`; an
        exception it raises ends the run and propagates."""
        progress = Progress(self.epochs, self.start_epoch,
                            enabled=self.progress and self.ctx.is_main)
        try:
            for epoch in range(self.start_epoch, self.epochs):
                if self.stopped():
                    break
                started = time.perf_counter()
                for loader in self.epoch_loaders():
                    loader.set_epoch(epoch)
                self.begin_epoch(epoch)
                train = self.train_epoch(epoch, progress)
                val = self.validate()
                metrics = self.end_epoch(epoch, train, val, time.perf_counter() - started)
                progress.end_epoch(time.perf_counter() - started)
                if on_epoch_end is not None:
                    on_epoch_end(epoch, metrics)
            return self.result()
        finally:
            self.close()

    def train_epoch(self, epoch: int, progress: Progress) -> dict[str, float]:
        """One pass over this process's shard of the training data: mean loss and top-1 over
        all processes, images per second and the last learning rate."""
        ctx, binarizer = self.ctx, self.model.binarizer
        self.net.train()
        meter = Meter(ctx.device)
        progress.start_epoch_(epoch, len(self.train_loader))
        images, started = 0, time.perf_counter()
        for batch, (x, y) in enumerate(self.train_loader):
            binarizer.before_batch(self.model, epoch, batch)
            self.scheduler.step(epoch, batch)
            x, y = ctx.to_device(x, y, self.channels_last)
            loss, logits = self.step(x, y, epoch, batch)
            meter.update(loss, logits, y)
            images += y.size(0) * ctx.world_size
            if progress.due(batch + 1):
                running = meter.result()
                progress.draw(batch + 1, running["loss"], running["top1"], images)
            if self.print_freq and (batch + 1) % self.print_freq == 0 and ctx.is_main:
                running = meter.result()
                self.log.info("epoch %d [%d/%d]  loss %.4f  top1 %.2f  lr %.4g", epoch + 1,
                              batch + 1, len(self.train_loader), running["loss"],
                              running["top1"], self.scheduler.lr())
        result = meter.result(ctx)
        result["images_per_s"] = images / max(time.perf_counter() - started, 1e-9)
        result["lr"] = self.scheduler.lr()
        return result

    def validate(self) -> dict[str, float]:
        """Rank 0's BatchNorm statistics everywhere (what its checkpoint holds), then
        :func:`validate` over ``val_loader``."""
        self.ctx.broadcast_buffers(self.model)
        return validate(self.model, self.val_loader, self.ctx, self.channels_last, self.autocast())
