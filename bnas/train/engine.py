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

import logging
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import build_model
from ..binarize import OptimizerSettings, RunSpec
from ..errors import BnasError
from ..ops import BinConvOp, native
from ..ops.lean import fused_input
from ..run import checkpoint as run_checkpoint
from ..run.context import Context, distributed_context
from ..run.loop import EpochCallback, EpochRun, validate
from ..run.metrics import MetricsLog
from ..run.rng import rng_state, seed_everything, set_rng_state
from ..run.rundir import attach_run_log, default_run_dir, make_run_dir
from ..run.schedules import LrScheduler, build_schedule
from . import checkpoint
from .config import TrainConfig, config_dict, save_config
from .data import LOADERS, Data

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
log = logging.getLogger("bnas.train")


class NonFiniteLoss(BnasError):
    """The training loss became NaN or infinite; the run stopped before using it."""


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


def autocast(cfg: TrainConfig, ctx: Context) -> AbstractContextManager | None:
    """The ``--amp`` context of forward passes (None without ``--amp``)."""
    if cfg.amp is None:
        return None
    return torch.autocast(device_type=ctx.device.type, dtype=AMP_DTYPES[cfg.amp])


class Trainer(EpochRun):
    """One training run: built from a configuration by :meth:`__init__`, run by :meth:`fit`.

    After ``fit``, :attr:`model` holds the final weights (unwrapped from DDP).
    """

    log = log

    def __init__(self, cfg: TrainConfig, ctx: Context) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.epochs, self.progress, self.channels_last = cfg.epochs, cfg.progress, cfg.channels_last
        self.print_freq = cfg.print_freq or 0
        self.out = self._run_dir()
        self.handlers = attach_run_log(log, self.out / "log", ctx.is_main)
        seed_everything(cfg.seed)
        self.data: Data = LOADERS.get(cfg.loader)(cfg, ctx, True)
        self.train_loader, self.val_loader = self.data.train, self.data.val
        self.model = build_network(cfg, self.data.num_classes, ctx)
        self.identity = model_identity(self.model, cfg)
        if ctx.distributed:  # the same initial weights everywhere, other random streams
            seed_everything(cfg.seed + ctx.rank)
        steps = len(self.data.train)
        self.optimizer = self.model.binarizer.optimizer(
            self.model, OptimizerSettings(cfg.lr, cfg.optimizer, cfg.momentum, cfg.weight_decay),
            RunSpec(cfg.epochs, steps, cfg.family))
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
        for note in cfg.phase_notes:
            log.info("recipe phase scaled to --epochs: %s", note)
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
        if cfg.out is None and cfg.resume is True:
            raise BnasError("--resume needs --out DIR (the run directory to continue)")
        out = make_run_dir(self.ctx, cfg.out or default_run_dir("train", Path(cfg.name).stem))
        if cfg.out is None:
            cfg.out = str(out)
        return out

    def _resume_file(self) -> Path | None:
        resume = self.cfg.resume
        if resume is False or resume is None:
            return None
        path = self.out if resume is True else Path(resume).expanduser()
        if path.is_dir():
            path = path / run_checkpoint.CHECKPOINT
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
            set_rng_state(states[self.ctx.rank])
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
        """Train the remaining epochs; returns the final metrics (:meth:`result`)."""
        return self.run(on_epoch_end)

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        if self.drop_path:
            self.model.drop_path_prob = self.cfg.drop_path * epoch / self.cfg.epochs

    def autocast(self) -> AbstractContextManager | None:
        return autocast(self.cfg, self.ctx)

    def step(self, x: torch.Tensor, y: torch.Tensor, epoch: int = 0,
             batch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward and optimizer step on one batch; returns (loss, logits)."""
        with self.autocast() or nullcontext():
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

    train_step = step

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

    def end_epoch(self, epoch: int, train: dict[str, float], val: dict[str, float],
                  seconds: float) -> dict[str, float]:
        """Best weights, checkpoint (rank 0, atomic), metrics record and log line."""
        cfg, ctx = self.cfg, self.ctx
        metrics = {"top1": val["top1"], "top5": val["top5"], "loss": val["loss"],
                   "train_loss": train["loss"], "train_top1": train["top1"], "lr": train["lr"],
                   "epoch_time": seconds, "images_per_s": train["images_per_s"]}
        is_best = self.best_top1 is None or metrics["top1"] > self.best_top1
        if is_best:
            self.best_top1 = metrics["top1"]
        self.last = {"epoch": epoch, **metrics}
        rng = ctx.all_gather_object(rng_state())
        if ctx.is_main:
            common = {"model": self.model.state_dict(), "identity": self.identity,
                      "config": config_dict(cfg), "epoch": epoch + 1}
            if is_best:
                run_checkpoint.save("weights", {**common, "top1": metrics["top1"],
                                                "top5": metrics["top5"]}, self.out / "best.pt")
            run_checkpoint.save("checkpoint", {
                **common, "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "schedule": self.scheduler.state_dict(),
                "binarizer": self.model.binarizer.config(), "rng": rng,
                "best_top1": self.best_top1, "metrics": self.last}, self.out / run_checkpoint.CHECKPOINT)
        ctx.barrier()
        self.saved_epoch = epoch + 1
        self.metrics_log.write({**self.last, "best_top1": self.best_top1})
        log.info("epoch %d/%d  train loss %.4f top1 %.2f | val loss %.4f top1 %.2f top5 %.2f "
                 "(best %.2f) | lr %.4g | %.1fs, %.0f img/s", epoch + 1, cfg.epochs,
                 metrics["train_loss"], metrics["train_top1"], metrics["loss"], metrics["top1"],
                 metrics["top5"], self.best_top1, metrics["lr"], metrics["epoch_time"],
                 metrics["images_per_s"])
        return metrics

    def result(self) -> dict[str, Any]:
        """Final metrics: best and last validation results, epochs done, run directory."""
        return {"best_top1": self.best_top1, "last_top1": self.last.get("top1"),
                "last_top5": self.last.get("top5"), "last_loss": self.last.get("loss"),
                "epochs": (self.last["epoch"] + 1) if self.last else self.start_epoch,
                "out": str(self.out)}

    def close(self) -> None:
        self.metrics_log.close()
        super().close()


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
                "binarizer_hparams", "layer_overrides", "dataset", "data_recipe", "image_size")


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


#: The settings a packed file fixes (its header holds the model itself).
PACKED_FIXED = ("arch", "config", "layers", "init_channels", "num_classes", "binarizer",
                "binarizer_hparams", "layer_overrides")


def packed_settings(path: str | Path, given: dict[str, Any]) -> dict[str, Any]:
    """The dataset and image pipeline a packed ``.bnx`` file's model was trained with (its
    header's identity), for the fields not in ``given``; settings that would change the model
    itself are refused (the file fixes it)."""
    from ..deploy.fileio import model_identity

    ident = model_identity(path)
    fixed = [k for k in PACKED_FIXED if given.get(k) not in (None, {})]
    if fixed:
        raise BnasError(f"{path} is a packed model, which fixes its architecture, size and "
                        f"binarizer: drop --{fixed[0].replace('_', '-')}")
    recorded = {"dataset": ident.get("dataset"), **(ident.get("data") or {})}
    return {k: v for k, v in recorded.items()
            if k in MODEL_FIELDS and given.get(k) is None and v is not None}


def evaluate(cfg: TrainConfig, weights_path: str | Path, packed: bool = False) -> dict[str, float]:
    """Top-1, top-5 (in %) and cross-entropy of the weights in ``weights_path`` (a ``best.pt``,
    ``checkpoint.pt`` or, with ``packed``, a ``.bnx`` file from :func:`bnas.deploy.save`) on
    the validation set of ``cfg``; with ``packed``, through the bit-packed CPU engine
    (:func:`bnas.deploy.pack`)."""
    from ..deploy.source import is_packed_file

    device = "cpu" if packed and cfg.device == "auto" else cfg.device
    with distributed_context(device) as ctx:
        seed_everything(cfg.seed)
        data = LOADERS.get(cfg.loader)(cfg, ctx, False)
        if is_packed_file(weights_path):
            model = _packed_file(weights_path, cfg, ctx, data.num_classes)
        else:
            model = build_network(cfg, data.num_classes, ctx)
            saved = checkpoint.load(weights_path)
            checkpoint.load_model_state(weights_path, saved, model, model_identity(model, cfg))
            if packed:
                model = packed_for(model, cfg, ctx)
        return validate(model, data.val, ctx, cfg.channels_last, autocast(cfg, ctx))


def _packed_file(path: str | Path, cfg: TrainConfig, ctx: Context, classes: int) -> nn.Module:
    """The model of a packed file, checked against the run (CPU, float32, ``classes``)."""
    from ..deploy import fileio

    _check_packed_run(cfg, ctx)
    model = fileio.load(path)
    if model.deploy_identity.get("num_classes") != classes:
        raise BnasError(f"{path} has {model.deploy_identity.get('num_classes')} outputs; "
                        f"dataset '{cfg.dataset}' has {classes} classes")
    return model


def _check_packed_run(cfg: TrainConfig, ctx: Context) -> None:
    if ctx.device.type != "cpu" or cfg.amp or cfg.channels_last:
        raise BnasError("--packed runs float32 on the CPU: drop --device, --amp and "
                        "--channels-last")


def packed_for(model: nn.Module, cfg: TrainConfig, ctx: Context) -> nn.Module:
    """``model`` on the packed engine (float32 on the CPU only)."""
    _check_packed_run(cfg, ctx)
    from ..deploy import pack

    return pack(model)
