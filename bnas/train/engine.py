"""The training engine: :func:`train` retrains any genotype with any binarization scheme, on
one process or many (``torchrun``); :func:`evaluate` measures saved weights.

One training step, in order: the scheme's ``before_batch`` hook, the schedule's learning rate
(and momentum) for this iteration, forward under ``torch.autocast`` when ``--amp`` is set, a
check that the loss is finite on every process, backward (scaled for fp16), optional
gradient-norm clipping of the unscaled gradients, and the optimizer step. Each epoch starts
with the scheme's ``set_epoch`` and the drop-path ramp ``drop_path * epoch / epochs``, and ends
with validation, the checkpoint (rank 0) and the ``on_epoch_end`` callback.

Resuming (``--resume``) restarts from the last completed epoch with the saved model, optimizer
state, gradient scaler and generator states; the data order and the schedule depend only on the
seed and the position, so the run reaches the same weights as one never interrupted (on the
CPU, same seed, one process). Optimizer state comes from the checkpoint; the learning rate
follows the configuration. ``--init-weights`` instead starts a new run from saved or imported
weights (fresh optimizer and schedule); a run resumed after its first epoch keeps its own.
"""
from __future__ import annotations

import inspect
import logging
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import build_model
from ..errors import BnasError
from ..ops import BinConvOp, native
from ..ops.lean import fused_input
from ..runio import EpochCallback, attach_run_log
from . import checkpoint
from .config import TrainConfig, config_dict, save_config
from .data import LOADERS, Data
from .distributed import Context, distributed_context
from .metrics import Meter, MetricsLog
from .progress import Progress
from .schedules import LrScheduler, build_schedule

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
log = logging.getLogger("bnas.train")


class NonFiniteLoss(BnasError):
    """The training loss became NaN or infinite; the run stopped before using it."""


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_network(cfg: TrainConfig, num_classes: int, ctx: Context) -> nn.Module:
    """The configured model on the run's device (channels-last, SyncBatchNorm if asked)."""
    model = build_model(cfg.arch, dataset=cfg.dataset, num_classes=num_classes, layers=cfg.layers,
                        init_channels=cfg.init_channels, config=cfg.config,
                        binarizer=cfg.binarizer, layer_overrides=cfg.layer_overrides,
                        **cfg.binarizer_hparams)
    if cfg.sync_bn and ctx.distributed:
        if ctx.device.type != "cuda":
            raise BnasError("--sync-bn needs GPUs (SyncBatchNorm does not run on the CPU)")
        model = _keep_attributes(nn.SyncBatchNorm.convert_sync_batchnorm(model), model)
    model = model.to(ctx.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _keep_attributes(converted: nn.Module, original: nn.Module) -> nn.Module:
    for name in ("genotype", "binarizer", "dataset", "layer_overrides"):
        setattr(converted, name, getattr(original, name))
    return converted


def model_identity(model: nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    return checkpoint.identity(model, layers=cfg.layers, init_channels=cfg.init_channels,
                               config=cfg.config)


def _to_device(x: torch.Tensor, y: torch.Tensor, ctx: Context,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.to(ctx.device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(ctx.device, non_blocking=True)


def _autocast(cfg: TrainConfig, ctx: Context):
    if cfg.amp is None:
        return nullcontext()
    return torch.autocast(device_type=ctx.device.type, dtype=AMP_DTYPES[cfg.amp])


@torch.no_grad()
def run_validation(model: nn.Module, loader: Any, cfg: TrainConfig, ctx: Context) -> dict[str, float]:
    """Loss (plain cross-entropy), top-1 and top-5 over the whole validation set."""
    model.eval()
    meter = Meter(ctx.device)
    criterion = nn.CrossEntropyLoss()
    for x, y in loader:
        x, y = _to_device(x, y, ctx, cfg.channels_last)
        with _autocast(cfg, ctx):
            logits = model(x)
        meter.update(criterion(logits.float(), y), logits, y)
    return meter.result(ctx)


def _make_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int) -> torch.optim.Optimizer:
    """The scheme's optimizer; schemes with scheduled hyper-parameters (Bop) also get the run's
    length."""
    binarizer = model.binarizer
    kwargs: dict[str, Any] = {"name": cfg.optimizer, "lr": cfg.lr, "momentum": cfg.momentum,
                              "weight_decay": cfg.weight_decay, "dataset": cfg.style}
    accepted = inspect.signature(binarizer.optimizer).parameters
    kwargs.update({k: v for k, v in (("epochs", cfg.epochs), ("steps_per_epoch", steps_per_epoch))
                   if k in accepted})
    return binarizer.optimizer(model, **kwargs)


def _setup_logging(out: Path, enabled: bool) -> list[logging.Handler]:
    return attach_run_log(log, out / "log", enabled)


class Trainer:
    """One training run: built from a configuration by :meth:`__init__`, run by :meth:`fit`.

    After ``fit``, :attr:`model` holds the final weights (unwrapped from DDP).
    """

    def __init__(self, cfg: TrainConfig, ctx: Context) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.out = self._run_dir()
        self._handlers = _setup_logging(self.out, ctx.is_main)
        seed_everything(cfg.seed)
        self.data: Data = LOADERS.get(cfg.loader)(cfg, ctx, True)
        self.model = build_network(cfg, self.data.num_classes, ctx)
        self.identity = model_identity(self.model, cfg)
        if ctx.distributed:  # the same initial weights everywhere, other random streams
            seed_everything(cfg.seed + ctx.rank)
        steps = len(self.data.train)
        self.optimizer = _make_optimizer(self.model, cfg, steps)
        self.scheduler = LrScheduler(self.optimizer, build_schedule(
            cfg.schedule, cfg.epochs, steps, cfg.warmup_epochs, cfg.schedule_args))
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.amp == "fp16")
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.start_epoch, self.saved_epoch = 0, 0
        self.best_top1: float | None = None
        self.last: dict[str, Any] = {}
        self._resume()
        if self.start_epoch == 0 and cfg.init_weights:
            self._init_weights(Path(cfg.init_weights).expanduser())
        self.net = (DistributedDataParallel(self.model, device_ids=[ctx.device.index]
                                            if ctx.device.type == "cuda" else None)
                    if ctx.distributed else self.model)
        self.metrics_log = MetricsLog(self.out, ctx.is_main)
        self.metrics_log.truncate(self.start_epoch)
        if ctx.is_main:
            save_config(cfg, self.out / "config.yaml")
        self.drop_path = hasattr(self.model, "drop_path_prob")
        if cfg.drop_path and not self.drop_path:
            log.info("drop path ignored: %s has no drop-path edges", cfg.name)
        params = sum(p.numel() for p in self.model.parameters())
        log.info("training %s (%d parameters, binarizer %s) on %s: %d process(es), device %s, "
                 "%d epochs, batch %d; run directory %s", cfg.name, params, cfg.binarizer,
                 cfg.dataset, ctx.world_size, ctx.device, cfg.epochs, cfg.batch_size, self.out)
        paper_network = self.model.binarizer.paper_network(cfg.arch)
        if paper_network:
            log.info("note: %s's published figures for %s used its own network, --arch %s",
                     cfg.binarizer, cfg.arch, paper_network)
        if ctx.device.type == "cpu" and any(isinstance(m, BinConvOp) and fused_input(m.conv)
                                            for m in self.model.modules()):
            log.info("fused CPU kernels for binary operations: %s", native.describe())

    # -- setup ------------------------------------------------------------------------------
    def _run_dir(self) -> Path:
        cfg = self.cfg
        if cfg.out is None and isinstance(cfg.resume, str):
            resume = Path(cfg.resume).expanduser()
            cfg.out = str(resume if resume.is_dir() else resume.parent)
        if cfg.out is None:
            if cfg.resume is True:
                raise BnasError("--resume needs --out DIR (the run directory to continue)")
            stamp = time.strftime("%Y%m%d-%H%M%S")
            cfg.out = self.ctx.broadcast_object(f"runs/train-{Path(cfg.name).stem}-{stamp}")
        out = Path(cfg.out).expanduser()
        if self.ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
        self.ctx.barrier()
        return out

    def _resume_file(self) -> Path | None:
        resume = self.cfg.resume
        if resume is False or resume is None:
            return None
        path = self.out if resume is True else Path(resume).expanduser()
        if path.is_dir():
            path = path / "checkpoint.pt"
            if not path.is_file():
                log.info("no checkpoint in %s yet: starting from scratch", path.parent)
                return None
        return path

    def _resume(self) -> None:
        path = self._resume_file()
        if path is None:
            return
        saved = checkpoint.load(path)
        if saved["kind"] != "checkpoint":
            raise BnasError(f"{path} holds weights only; --resume needs a checkpoint.pt")
        checkpoint.load_model_state(path, saved, self.model, self.identity)
        bases = [group["initial_lr"] for group in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(saved["optimizer"])
        except (ValueError, KeyError) as exc:
            raise BnasError(f"{path}: the optimizer state does not fit this run's optimizer "
                            f"({exc})") from None
        for group, base in zip(self.optimizer.param_groups, bases):
            group["initial_lr"] = base
        if saved["scaler"] and self.scaler.is_enabled():  # fp16 before and now
            self.scaler.load_state_dict(saved["scaler"])
        self.start_epoch = self.saved_epoch = int(saved["epoch"])
        self.best_top1 = saved["best_top1"]
        self.last = dict(saved.get("metrics") or {})
        states = saved["rng"]
        if len(states) == self.ctx.world_size:
            checkpoint.set_rng_state(states[self.ctx.rank])
        else:
            log.info("checkpoint saved by %d process(es), resumed on %d: fresh random streams",
                     len(states), self.ctx.world_size)
        log.info("resumed from %s after epoch %d (best top-1 %.2f)", path, self.start_epoch,
                 self.best_top1 or 0.0)

    def _init_weights(self, path: Path) -> None:
        """Load the weights of ``path`` into the new run's model, strictly (``--init-weights``:
        ReCU's fine-tuning from a trained model); optimizer and schedule start afresh."""
        saved = checkpoint.load(path)
        checkpoint.load_model_state(path, saved, self.model, self.identity)
        origin = saved.get("imported") or {}
        log.info("initial weights from %s%s", path,
                 f" (imported from {origin['project']}: {origin['file']})" if origin else "")

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, on_epoch_end: EpochCallback | None = None) -> dict[str, Any]:
        """Train the remaining epochs; returns the final metrics."""
        cfg, ctx = self.cfg, self.ctx
        progress = Progress(cfg.epochs, self.start_epoch, enabled=cfg.progress and ctx.is_main)
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                started = time.perf_counter()
                self.model.binarizer.set_epoch(self.model, epoch, cfg.epochs)
                if self.drop_path:
                    self.model.drop_path_prob = cfg.drop_path * epoch / cfg.epochs
                train = self.train_epoch(epoch, progress)
                self._sync_buffers()
                val = run_validation(self.model, self.data.val, cfg, ctx)
                metrics = {"top1": val["top1"], "top5": val["top5"], "loss": val["loss"],
                           "train_loss": train["loss"], "train_top1": train["top1"],
                           "lr": train["lr"], "epoch_time": time.perf_counter() - started,
                           "images_per_s": train["images_per_s"]}
                self._end_epoch(epoch, metrics)
                progress.end_epoch(metrics["epoch_time"])
                if on_epoch_end is not None:
                    on_epoch_end(epoch, metrics)
        finally:
            self.close()
        return self.summary()

    def train_epoch(self, epoch: int, progress: Progress) -> dict[str, float]:
        """One pass over the training shard; mean loss and top-1 over all processes."""
        cfg, ctx = self.cfg, self.ctx
        self.net.train()
        loader = self.data.train
        loader.set_epoch(epoch)
        meter = Meter(ctx.device)
        progress.start_epoch_(epoch, len(loader))
        images, started = 0, time.perf_counter()
        for batch, (x, y) in enumerate(loader):
            self.model.binarizer.before_batch(self.model, epoch, batch)
            self.scheduler.step(epoch, batch)
            x, y = _to_device(x, y, ctx, cfg.channels_last)
            loss, logits = self.train_step(x, y, epoch, batch)
            meter.update(loss, logits, y)
            images += y.size(0) * ctx.world_size
            if progress.due(batch + 1):
                running = meter.result()
                progress.draw(batch + 1, running["loss"], running["top1"], images)
        result = meter.result(ctx)
        result["images_per_s"] = images / max(time.perf_counter() - started, 1e-9)
        result["lr"] = self.scheduler.lr()
        return result

    def train_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int = 0,
                   batch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward and optimizer step on one batch; returns (loss, logits)."""
        with _autocast(self.cfg, self.ctx):
            logits = self.net(x)
            loss = self.criterion(logits, y)
        self._check_finite(loss, epoch, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            self.model.binarizer.clip_grad_norm_(self.model, self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), logits.detach()

    def _check_finite(self, loss: torch.Tensor, epoch: int, batch: int) -> None:
        value = loss.detach().float().clone()
        self.ctx.all_reduce_sum(value)  # every process stops together
        if torch.isfinite(value):
            return
        kept = (f"the last good checkpoint is {self.out / 'checkpoint.pt'} (epoch "
                f"{self.saved_epoch})" if self.saved_epoch else "no checkpoint was written yet")
        raise NonFiniteLoss(f"the training loss became {value.item()} at epoch {epoch + 1}, step "
                            f"{batch + 1} (lr {self.scheduler.lr():.4g}); stopped: {kept}. A lower --lr "
                            f"(the recipes' rates are for runs of hundreds of epochs) or "
                            f"--grad-clip may help")

    def _sync_buffers(self) -> None:
        """Give every process rank 0's BatchNorm statistics (what the checkpoint will hold)."""
        if self.ctx.distributed:
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def _end_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Best weights, checkpoint (rank 0, atomic), metrics record and log line."""
        cfg, ctx = self.cfg, self.ctx
        is_best = self.best_top1 is None or metrics["top1"] > self.best_top1
        if is_best:
            self.best_top1 = metrics["top1"]
        self.last = {"epoch": epoch, **metrics}
        rng = ctx.all_gather_object(checkpoint.rng_state())
        if ctx.is_main:
            state = self.model.state_dict()
            common = {"format": checkpoint.FORMAT, "model": state, "identity": self.identity,
                      "config": config_dict(cfg)}
            if is_best:
                checkpoint.atomic_save({**common, "kind": "weights", "epoch": epoch + 1,
                                        "top1": metrics["top1"], "top5": metrics["top5"]},
                                       self.out / "best.pt")
            checkpoint.atomic_save({
                **common, "kind": "checkpoint", "epoch": epoch + 1,
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "schedule": self.scheduler.state_dict(),
                "binarizer": self.model.binarizer.config(), "rng": rng,
                "best_top1": self.best_top1, "metrics": self.last}, self.out / "checkpoint.pt")
        ctx.barrier()
        self.saved_epoch = epoch + 1
        self.metrics_log.write({**self.last, "best_top1": self.best_top1})
        log.info("epoch %d/%d  train loss %.4f top1 %.2f | val loss %.4f top1 %.2f top5 %.2f "
                 "(best %.2f) | lr %.4g | %.1fs, %.0f img/s", epoch + 1, cfg.epochs,
                 metrics["train_loss"], metrics["train_top1"], metrics["loss"], metrics["top1"],
                 metrics["top5"], self.best_top1, metrics["lr"], metrics["epoch_time"],
                 metrics["images_per_s"])

    def summary(self) -> dict[str, Any]:
        """Final metrics: best and last validation results, epochs done, run directory."""
        return {"best_top1": self.best_top1, "last_top1": self.last.get("top1"),
                "last_top5": self.last.get("top5"), "last_loss": self.last.get("loss"),
                "epochs": (self.last["epoch"] + 1) if self.last else self.start_epoch,
                "out": str(self.out)}

    def close(self) -> None:
        self.metrics_log.close()
        for handler in self._handlers:
            log.removeHandler(handler)
            handler.close()
        self._handlers = []


def train(cfg: TrainConfig, *, on_epoch_end: EpochCallback | None = None) -> dict[str, Any]:
    """Run the whole training of ``cfg`` (one process, or DDP under torchrun).

    Returns ``{"best_top1", "last_top1", "last_top5", "last_loss", "epochs", "out"}``.
    ``on_epoch_end(epoch, metrics)`` is called on every process after each epoch's validation
    and checkpoint, with ``top1``, ``top5``, ``loss``, ``train_loss``, ``train_top1``, ``lr``,
    ``epoch_time`` (and ``images_per_s``); an exception it raises ends the run and propagates.
    """
    with distributed_context(cfg.device) as ctx:
        return Trainer(cfg, ctx).fit(on_epoch_end)


# -- evaluation ------------------------------------------------------------------------------
#: Configuration fields that describe the model (filled from a weights file when not given).
MODEL_FIELDS = ("arch", "config", "layers", "init_channels", "num_classes", "binarizer",
                "binarizer_hparams", "layer_overrides", "dataset", "image_size")


def weights_settings(path: str | Path, given: dict[str, Any]) -> dict[str, Any]:
    """The model settings a weights (or checkpoint) file was trained with, for the fields not
    in ``given``; a file for another architecture than ``given['arch']`` is refused here."""
    saved = checkpoint.load(path)
    ident = saved["identity"]
    arch = given.get("arch") or None
    if arch is not None:
        from ..genotype import load as load_genotype

        if checkpoint.structure(load_genotype(arch)) != ident["structure"]:
            raise BnasError(f"{path} holds weights of {checkpoint.describe(ident)}, not of '{arch}'")
    trained = saved.get("config") or {}
    return {k: trained[k] for k in MODEL_FIELDS if given.get(k) is None and k in trained}


def evaluate(cfg: TrainConfig, weights_path: str | Path) -> dict[str, float]:
    """Top-1, top-5 (in %) and cross-entropy of the weights in ``weights_path`` (a ``best.pt``
    or ``checkpoint.pt``) on the validation set of ``cfg``."""
    with distributed_context(cfg.device) as ctx:
        seed_everything(cfg.seed)
        data = LOADERS.get(cfg.loader)(cfg, ctx, False)
        model = build_network(cfg, data.num_classes, ctx)
        saved = checkpoint.load(weights_path)
        checkpoint.load_model_state(weights_path, saved, model, model_identity(model, cfg))
        return run_validation(model, data.val, cfg, ctx)
