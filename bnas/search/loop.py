"""``bnas search``: the search loop (BNAS, Kim et al., ECCV 2020, Sec. 3.3 and Alg. 1).

Each step takes an architecture step on a batch of the architecture split (see
:mod:`bnas.search.architect`), then a weight step on a batch of the weight split (SGD, lr
0.025 cosine-annealed per epoch to 0.001, momentum 0.9, weight decay 3e-4, as BNAS). The
binarizer's hooks run as in training (``set_epoch`` per epoch, ``before_batch`` per step), and
the binarizer also decides how weights are optimised (its ``optimizer``), so any scheme can be
searched under. After each epoch the supernet is validated on the architecture split (without
augmentation, in eval mode), the genotypes are derived (:mod:`bnas.search.derive`) and
recorded (:mod:`bnas.search.record`), and a checkpoint is written atomically. The result is
the genotype pair of the epoch with the best validation accuracy (earliest on ties).

Where this differs from BNAS's code, on purpose:

- the diversity term covers every edge of both cell types, and ``gamma`` down-weights the
  zeroise column (both were bugs there, see :mod:`bnas.search.architect` and
  :mod:`bnas.search.derive`); every operation's convolution is binarized;
- the genotype recorded for an epoch is derived from the alphas the epoch ends with (the ones
  its validation measured), not the ones it started with;
- genotypes are JSON files found by name (not lines appended to ``genotypes.py``); loaders are
  built once; nothing assumes a GPU.

Resuming: the data order, augmentation seeds and learning rate depend only on the seed and the
epoch, and the checkpoint (written after validation) holds every other piece of state, so a
resumed run ends with the same alphas and genotypes as one never interrupted (CPU, same thread
count).

Several processes (``torchrun``): the weights are wrapped in DistributedDataParallel, the
alphas are left out of it and their gradients averaged explicitly (:class:`Architect`), and
every process checks after each epoch that all hold the same alphas.
"""
from __future__ import annotations

import ctypes
import datetime as dt
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset

from .. import __version__
from .. import genotype as G
from ..binarize import OptimizerSettings, RunSpec, get as get_binarizer
from ..data import build_dataset, dataset_info, num_classes_of
from ..data.loaders import build_loader
from ..data.split import split_indices
from ..errors import BnasError
from ..run import checkpoint as run_checkpoint
from ..run.context import Context, distributed_context, per_process_batch
from ..run.loop import EpochCallback, EpochRun
from ..run.rng import epoch_seed
from ..run.rundir import attach_run_log, default_run_dir, make_run_dir
from ..run.schedules import LrScheduler, build_schedule
from ..runio import check_writable_dir
from .architect import Architect
from .config import SearchConfig, from_dict
from .cost import CostObjective, RetrainSize, genotype_counts
from .collapse import count_parameter_free, parameter_free_share
from .derive import derive
from .network import ARCH_NAMES, SearchNetwork
from .record import SearchRecord

log = logging.getLogger("bnas.search")
CHECKPOINT_KIND = "search-checkpoint"
IMAGENET_SUFFIX = "_imagenet"


@dataclass
class SearchResult:
    """The outcome of a search: genotypes (CIFAR and ImageNet), the best epoch, the run."""

    genotype: G.Genotype
    genotype_imagenet: G.Genotype
    best_epoch: int
    best_top1: float
    out: Path
    alphas: dict[str, torch.Tensor] = field(default_factory=dict)


def _find_malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _find_malloc_trim()


def release_freed_memory(device: torch.device) -> None:
    """Give the host memory freed by the last pass back to the system. glibc keeps freed heap
    blocks, and the next pass (other tensor sizes) cannot reuse them all; trimming after each
    pass keeps the process's resident size near what it uses (README, "Memory allocator"). A
    no-op off glibc, for GPU tensors, and in effect under tcmalloc (which reuses freed blocks
    itself; :mod:`bnas.allocator`)."""
    if _MALLOC_TRIM is not None and device.type == "cpu":
        _MALLOC_TRIM(0)


def search_step(net: SearchNetwork, model: torch.nn.Module, architect: Architect,
                optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, torch.Tensor],
                arch_batch: tuple[torch.Tensor, torch.Tensor], epoch: int,
                update_arch: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One search step: the architecture step (unless ``update_arch`` is False: a warm-up
    epoch), then the weight step (``model`` is ``net`` or its DDP wrapper). Returns the weight
    step's loss and logits (detached)."""
    x, y = batch
    if update_arch:
        architect.step(*arch_batch, epoch, x_train=x, y_train=y, weight_optimizer=optimizer)
        release_freed_memory(x.device)
    optimizer.zero_grad(set_to_none=True)
    with net.grads_for("weights"):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
    optimizer.step()
    release_freed_memory(x.device)
    return loss.detach(), logits.detach()


def weight_optimizer(net: SearchNetwork, cfg: SearchConfig, steps_per_epoch: int) -> torch.optim.Optimizer:
    """The binarizer's optimizer for the supernet's weights (not the alphas), with BNAS's SGD
    settings, over the run's length (schemes with scheduled hyper-parameters use it)."""
    return net.binarizer.optimizer(
        net.weights_view(), OptimizerSettings(cfg.lr, "sgd", cfg.momentum, cfg.weight_decay),
        RunSpec(cfg.epochs, steps_per_epoch, dataset_info(cfg.dataset).family))


def lr_scheduler(optimizer: torch.optim.Optimizer, cfg: SearchConfig,
                 steps_per_epoch: int) -> LrScheduler:
    """BNAS's weight learning rate: ``lr`` cosine-annealed per epoch to ``lr_min`` (SGDR
    without restarts, as its ``CosineAnnealingLR``)."""
    return LrScheduler(optimizer, build_schedule("cosine", cfg.epochs, steps_per_epoch,
                                                 args={"final": cfg.lr_min / cfg.lr}))


def check_save_name(cfg: SearchConfig, overwrite: bool, names: Sequence[str] | None = None) -> None:
    """Refuse to replace an existing genotype (``names``, by default ``NAME`` and
    ``NAME_imagenet``; by name or in ``--genotype-dir``) unless asked."""
    if overwrite:
        return
    for name in names or (cfg.save, cfg.save + IMAGENET_SUFFIX):
        if cfg.genotype_dir is None:  # found by name: the user directory or a shipped genotype
            found = G.find(name)
        else:
            path = cfg.genotype_path(name)
            found = path if path.exists() else None
        if found is not None:
            raise BnasError(f"a genotype named '{name}' exists ({found}); choose another --save "
                            f"name or pass --overwrite")


def _cycle(loader) -> Iterator[Any]:
    while True:
        yield from loader


class Searcher(EpochRun):
    """One search run (see the module docstring): built by :meth:`__init__`, run by :meth:`run`.

    :attr:`model` is the supernet (with the binarizer and the alphas), :attr:`net` the module
    the steps run through (the supernet, or its DistributedDataParallel wrapper)."""

    log = log

    def __init__(self, cfg: SearchConfig, ctx: Context, saved: dict[str, Any] | None = None) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.epochs, self.progress = cfg.epochs, cfg.progress
        check_save_name(cfg, cfg.overwrite or saved is not None)
        if ctx.is_main:  # rank 0 writes the genotypes at the end: fail now, not then
            check_writable_dir(cfg.genotype_path(cfg.save).parent, "genotypes")
        self._build_data()
        self.out = self._run_dir(saved)
        self.handlers = attach_run_log(log, self.out / "log.txt", ctx.is_main)
        torch.manual_seed(cfg.seed)
        binarizer = get_binarizer(cfg.binarizer, **cfg.binarizer_hparams)
        self.model = SearchNetwork(self.num_classes, cfg.init_channels, cfg.layers, cfg.steps,
                                   cfg.space, binarizer, cfg.impl,
                                   partial=cfg.partial_channels).to(ctx.device)
        self.optimizer = weight_optimizer(self.model, cfg, len(self.train_loader))
        self.scheduler = lr_scheduler(self.optimizer, cfg, len(self.train_loader))
        self.cost = (CostObjective.for_search(cfg, self.model.op_names, self.num_classes, binarizer)
                     if cfg.cost is not None else None)
        self.architect = Architect(self.model, lr=cfg.arch_lr, weight_decay=cfg.arch_weight_decay,
                                   lam=cfg.lam, tau=cfg.tau, order=cfg.order, average=ctx.average_,
                                   cost=self.cost)
        self.start_epoch = 0
        self.best: dict[str, Any] | None = None
        self.stopped_after: int | None = None
        if saved is not None:
            self._restore(saved)
        self.net: torch.nn.Module = self.model
        if ctx.distributed:
            for alpha in self.model.arch_parameters():
                dist.broadcast(alpha.data, src=0)
            # DDP names the root module's parameters both "name" and ".name" internally.
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                self.model, [*ARCH_NAMES, *(f".{name}" for name in ARCH_NAMES)])
            self.net = DistributedDataParallel(
                self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        self.record = SearchRecord(self.out, self.model.op_names, cfg.steps, ctx.is_main)
        self.record.truncate(self.start_epoch)
        n_params = sum(p.numel() for p in self.model.weight_parameters())
        log.info("searching %s space with binarizer %s on %s (%d weight / %d architecture images, "
                 "%d classes): supernet C=%d, %d layers, %d weights; %d epochs, batch %d, "
                 "order %d, %d process(es) on %s; run directory %s",
                 cfg.space, self.model.binarizer.config(), cfg.dataset, self.split_sizes[0],
                 self.split_sizes[1], self.num_classes, cfg.init_channels, cfg.layers, n_params,
                 cfg.epochs, cfg.batch_size, cfg.order, ctx.world_size, ctx.device, self.out)
        if self.cost is not None:
            log.info("%s", self.cost.describe())

    # -- setup ------------------------------------------------------------------------------
    def _run_dir(self, saved: dict[str, Any] | None) -> Path:
        if saved is not None:
            return saved["path"].parent
        out = make_run_dir(self.ctx, self.cfg.out or default_run_dir("search", self.cfg.save))
        if self.cfg.out is None:
            self.cfg.out = str(out)
        return out

    def _build_data(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        options = {"root": cfg.data, "image_size": cfg.image_size}
        with ctx.main_first():  # rank 0 downloads (CIFAR) before the others look
            train_set = build_dataset(cfg.dataset, "train", augment=True, **options)
            val_set = build_dataset(cfg.dataset, "train", augment=False, **options)
        self.num_classes = num_classes_of(train_set) or dataset_info(cfg.dataset).num_classes
        if not self.num_classes:
            raise BnasError(f"dataset '{cfg.dataset}' has no classes")
        pool = list(range(len(train_set)))
        if cfg.subset is not None and cfg.subset < len(pool):
            pool = sorted(torch.randperm(len(pool), generator=torch.Generator().manual_seed(
                cfg.seed))[:cfg.subset].tolist())
        weight_pos, arch_pos = split_indices(len(pool), cfg.train_portion, cfg.seed)
        weight_idx, arch_idx = [pool[i] for i in weight_pos], [pool[i] for i in arch_pos]
        self.split_sizes = (len(weight_idx), len(arch_idx))
        common = {"batch_size": per_process_batch(cfg.batch_size, ctx), "rank": ctx.rank,
                  "world_size": ctx.world_size, "workers": cfg.workers,
                  "pin_memory": ctx.device.type == "cuda"}
        self.train_loader = build_loader(Subset(train_set, weight_idx), train=True, seed=cfg.seed,
                                         **common)
        self.arch_loader = build_loader(Subset(train_set, arch_idx), train=True, seed=cfg.seed + 1,
                                        **common)
        self.val_loader = build_loader(Subset(val_set, arch_idx), train=False, seed=cfg.seed,
                                       **common)

    def _restore(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["weight_optimizer"])
        self.architect.optimizer.load_state_dict(saved["arch_optimizer"])
        self.start_epoch = int(saved["epoch"])
        self.best = saved["best"]
        self.stopped_after = saved.get("stopped_after")
        log.info("resumed from %s after epoch %d", saved["path"], self.start_epoch)

    # -- the loop ---------------------------------------------------------------------------
    def epoch_loaders(self) -> list[Any]:
        return [self.train_loader, self.arch_loader]

    def begin_epoch(self, epoch: int) -> None:
        """The epoch's own random stream (dropout-free, but the binarizers may draw), the
        binarizer's schedules, and the architecture batches, cycled."""
        torch.manual_seed(epoch_seed(self.cfg.seed, epoch, self.ctx.rank))
        super().begin_epoch(epoch)
        self._arch_batches = _cycle(self.arch_loader)

    def step(self, x: torch.Tensor, y: torch.Tensor, epoch: int,
             batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        arch_batch = self.ctx.to_device(*next(self._arch_batches))
        return search_step(self.model, self.net, self.architect, self.optimizer, (x, y),
                           arch_batch, epoch, update_arch=epoch >= self.cfg.arch_warmup)

    def genotypes(self) -> dict[str, G.Genotype]:
        """The CIFAR genotype and the ImageNet one (zeroise down-weighted by ``gamma``)."""
        cfg, net = self.cfg, self.model
        weights = net.derivation_weights()
        return {"genotype": derive(weights, net.op_names, cfg.steps, net.space, 1.0, cfg.save,
                                   cfg.max_param_free),
                "genotype_imagenet": derive(weights, net.op_names, cfg.steps, net.space, cfg.gamma,
                                            cfg.save + IMAGENET_SUFFIX, cfg.max_param_free)}

    def stopped(self) -> bool:
        """DARTS+'s early stop (``--stop-param-free``, :mod:`bnas.search.collapse`)."""
        return self.stopped_after is not None

    def _check_agreement(self) -> None:
        alphas = [a.detach().cpu() for a in self.model.arch_parameters()]
        gathered = self.ctx.all_gather_object(alphas)
        if any(not all(torch.equal(a, b) for a, b in zip(alphas, other)) for other in gathered):
            raise RuntimeError("the search processes hold different architecture parameters")

    def end_epoch(self, epoch: int, train: dict[str, float], val: dict[str, float],
                  seconds: float) -> dict[str, float]:
        """Best genotypes so far, records and checkpoint (rank 0, atomic), log line; returns
        the epoch's metrics."""
        genotypes = self.genotypes()
        metrics = {"val_top1": val["top1"], "val_loss": val["loss"], "train_top1": train["top1"],
                   "train_loss": train["loss"], "lr": train["lr"], "seconds": round(seconds, 3)}
        metrics["parameter_free"] = parameter_free_share(genotypes["genotype"])
        free = count_parameter_free(genotypes["genotype"].normal)
        if self.cfg.stop_param_free is not None and free >= self.cfg.stop_param_free:
            self.stopped_after = epoch
        if self.cost is not None:
            metrics["cost"] = self.cost.model.of_genotype(genotypes["genotype"])
        if self.best is None or val["top1"] > self.best["val_top1"]:
            self.best = {"epoch": epoch, "val_top1": val["top1"],
                         **{k: g.to_json() for k, g in genotypes.items()}}
        self._check_agreement()
        if self.ctx.is_main:
            self.record.write(epoch, self.model.edge_weights(), genotypes, metrics)
            run_checkpoint.save(CHECKPOINT_KIND, {
                "epoch": epoch + 1, "config": self.cfg.to_dict(), "model": self.model.state_dict(),
                "weight_optimizer": self.optimizer.state_dict(),
                "arch_optimizer": self.architect.optimizer.state_dict(),
                "best": self.best, "stopped_after": self.stopped_after},
                self.out / run_checkpoint.CHECKPOINT)
        self.ctx.barrier()
        log.info("epoch %d/%d  train loss %.4f top1 %.2f | val loss %.4f top1 %.2f | lr %.5f "
                 "| %.1fs | %s", epoch + 1, self.cfg.epochs, train["loss"], train["top1"],
                 val["loss"], val["top1"], train["lr"], seconds, _describe(genotypes["genotype"]))
        log.info("parameter-free edges: normal %.0f%%, reduce %.0f%%%s",
                 100 * metrics["parameter_free"]["normal"], 100 * metrics["parameter_free"]["reduce"],
                 "" if self.stopped_after is None else
                 f"; stopping: {free} in the normal cell (--stop-param-free "
                 f"{self.cfg.stop_param_free}, DARTS+)")
        if self.cost is not None:
            log.info("genotype costs %s%s", self.cost.model.kind.format(metrics["cost"]),
                     _budget(self.cost.meets(metrics["cost"])))
        return metrics

    def provenance(self, gamma: float, date: str) -> dict[str, Any]:
        cfg = self.cfg
        return {"dataset": cfg.dataset, "epochs": cfg.epochs, "seed": cfg.seed, "space": cfg.space,
                "binarizer": self.model.binarizer.config(), "bnas_version": __version__,
                "date": date,
                "best_epoch": self.best["epoch"] + 1, "best_val_top1": self.best["val_top1"],
                "gamma": gamma, "ops": list(self.model.op_names),
                "alphas": {k: a.detach().cpu().tolist() for k, a in
                           zip(("normal", "reduce"), self.model.arch_parameters())},
                "search": {k: getattr(cfg, k) for k in (
                    "layers", "init_channels", "steps", "batch_size", "train_portion", "order",
                    "lam", "tau", "lr", "lr_min", "arch_lr", "image_size", "subset", "impl",
                    "partial_channels", "arch_warmup", "max_param_free", "stop_param_free")},
                **({"betas": {k: b.detach().cpu().tolist() for k, b in
                              zip(("normal", "reduce"), self.model.arch_parameters()[2:])}}
                   if cfg.partial_channels > 1 else {}),
                "stopped_after_epoch": (None if self.stopped_after is None
                                        else self.stopped_after + 1),
                "run": str(self.out)}

    def cost_report(self, genotype: G.Genotype) -> dict[str, Any]:
        """The cost setting (``kind`` None without ``--cost``) and ``genotype``'s cost at the
        retraining size: its parameters, FLOPs, BOPs and OPs (``counts``), and with ``--cost``
        the objective's figures (:meth:`bnas.search.cost.CostObjective.report`)."""
        cfg = self.cfg
        if self.cost is not None:
            size, setting = self.cost.model.size, self.cost.report(genotype)
        else:
            size = RetrainSize.of(cfg.dataset, cfg.cost_layers, cfg.cost_init_channels,
                                  cfg.cost_image_size, self.num_classes)
            setting = {"kind": None, "size": size.to_dict()}
        return {**setting, "counts": genotype_counts(genotype, size, self.model.binarizer)}

    def result(self) -> SearchResult:
        """Write the best epoch's genotypes (user directory and run directory)."""
        cfg = self.cfg
        found = {}
        # rank 0's clock: every process returns the same genotypes
        date = self.ctx.broadcast_object(dt.datetime.now().isoformat(timespec="seconds"))
        for key, gamma in (("genotype", 1.0), ("genotype_imagenet", cfg.gamma)):
            genotype = G.from_json(self.best[key], f"search result {key}")
            genotype.provenance = self.provenance(gamma, date)
            genotype.provenance["cost"] = self.cost_report(genotype)
            genotype.description = (f"searched by bnas {__version__} on {cfg.dataset} "
                                    f"({cfg.space} space, binarizer {cfg.binarizer})")
            found[key] = genotype
        if self.ctx.is_main:
            for genotype in found.values():
                G.save(genotype, cfg.genotype_path(genotype.name))
                G.save(genotype, self.out / f"{genotype.name}.json")
            log.info("best epoch %d (val top1 %.2f): genotypes '%s' and '%s' saved in %s",
                     self.best["epoch"] + 1, self.best["val_top1"], cfg.save,
                     cfg.save + IMAGENET_SUFFIX, cfg.genotype_path(cfg.save).parent)
        self.ctx.barrier()
        return SearchResult(found["genotype"], found["genotype_imagenet"], self.best["epoch"],
                            self.best["val_top1"], self.out,
                            {k: a.detach().cpu() for k, a in
                             zip(("normal", "reduce"), self.model.arch_parameters())})


def _budget(meets: bool | None) -> str:
    return {None: "", True: " (within the budget)", False: " (over the budget)"}[meets]


def _describe(genotype: G.Genotype) -> str:
    cells = []
    for name, cell in genotype.cells().items():
        nodes = " ".join("+".join(f"{op}({j})" for op, j in node) for node in cell.nodes)
        cells.append(f"{name}: {nodes}")
    return "; ".join(cells)


def search(cfg: SearchConfig | None = None, *, resume: str | Path | None = None,
           device: str | None = None, on_epoch_end: EpochCallback | None = None) -> SearchResult:
    """Run a search from ``cfg``, or continue the one saved in ``resume`` (a run directory or
    its checkpoint; its configuration is used, except ``device``).

    ``on_epoch_end(epoch, metrics)`` is called on every process after each epoch's checkpoint,
    with ``val_top1``, ``val_loss``, ``train_top1``, ``train_loss``, ``lr``, ``seconds`` and
    ``parameter_free`` (the derived cells' share of parameter-free edges, per cell type)."""
    saved = (run_checkpoint.load(resume, (CHECKPOINT_KIND,), "search checkpoint")
             if resume is not None else None)
    if saved is not None:
        cfg = from_dict(saved["config"])
    if cfg is None:
        raise BnasError("give a search configuration or --resume")
    if device is not None:
        cfg.device = device
    with distributed_context(cfg.device) as ctx:
        return Searcher(cfg, ctx, saved).run(on_epoch_end)
