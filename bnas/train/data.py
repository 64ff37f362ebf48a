"""The loaders a run reads, by ``--loader``: ``torch`` (torchvision datasets and a DataLoader)
or ``dali`` (NVIDIA DALI on the GPU, for image folders)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data import build_dataset, dataset_info, num_classes_of
from ..data.loaders import build_loader, subset
from ..errors import BnasError
from ..registry import Registry
from ..run.context import Context, per_process_batch

if TYPE_CHECKING:
    from .config import TrainConfig

#: Datasets stored as ``train/`` and ``val/`` image folders (what DALI can read).
FOLDER_DATASETS = ("imagenet", "imagefolder")


@dataclass
class Data:
    """A run's loaders (``train`` is None for evaluation) and the number of classes."""

    train: Any
    val: Any
    num_classes: int


def eval_batch(cfg: TrainConfig) -> int:
    """The global validation batch: ``--eval-batch-size``, else ``--batch-size``."""
    return cfg.eval_batch_size or cfg.batch_size


LoaderFactory = Callable[["TrainConfig", Context, bool], Data]
LOADERS: Registry[LoaderFactory] = Registry("loader")


@LOADERS.register("torch")
def torch_loaders(cfg: TrainConfig, ctx: Context, train: bool) -> Data:
    """torchvision datasets (``bnas.data.build_dataset``) through a DataLoader per process."""
    options = {"root": cfg.data, "image_size": cfg.image_size, "recipe": cfg.data_recipe}
    splits = ("train", "val") if train else ("val",)
    with ctx.main_first():  # rank 0 downloads (CIFAR) before the others look
        datasets = {split: build_dataset(cfg.dataset, split, augment=split == "train", **options)
                    for split in splits}
    num_classes = (cfg.num_classes or num_classes_of(datasets[splits[0]])
                   or dataset_info(cfg.dataset).num_classes)
    if not num_classes:
        raise BnasError(f"dataset '{cfg.dataset}' needs --num-classes")
    common = {"seed": cfg.seed, "rank": ctx.rank, "world_size": ctx.world_size,
              "workers": cfg.workers, "pin_memory": ctx.device.type == "cuda"}
    val = build_loader(subset(datasets["val"], cfg.val_subset, cfg.seed), train=False,
                       batch_size=per_process_batch(eval_batch(cfg), ctx), **common)
    loader = (build_loader(subset(datasets["train"], cfg.train_subset, cfg.seed), train=True,
                           batch_size=per_process_batch(cfg.batch_size, ctx), **common)
              if train else None)
    return Data(loader, val, num_classes)


@LOADERS.register("dali")
def dali_loaders(cfg: TrainConfig, ctx: Context, train: bool) -> Data:
    """NVIDIA DALI pipelines over ``train/`` and ``val/`` image folders, one GPU per process."""
    from ..data.dali import DaliLoader, require_dali

    require_dali()
    if cfg.dataset not in FOLDER_DATASETS:
        raise BnasError(f"--loader dali reads image folders ({', '.join(FOLDER_DATASETS)}), "
                        f"not '{cfg.dataset}'; use --loader torch")
    if cfg.train_subset is not None or cfg.val_subset is not None:
        raise BnasError("--train-subset and --val-subset need --loader torch")
    if not cfg.data:
        raise BnasError(f"dataset '{cfg.dataset}' needs --data DIR")
    root = Path(cfg.data).expanduser()
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir()) \
        if (root / "train").is_dir() else []
    num_classes = cfg.num_classes or len(classes) or dataset_info(cfg.dataset).num_classes
    size = cfg.image_size or dataset_info(cfg.dataset).image_size
    common = {"size": size, "rank": ctx.rank, "world_size": ctx.world_size,
              "workers": cfg.workers, "device": ctx.device, "seed": cfg.seed,
              "recipe": cfg.data_recipe}
    val = DaliLoader(root, "val", batch_size=per_process_batch(eval_batch(cfg), ctx), **common)
    return Data(DaliLoader(root, "train", batch_size=per_process_batch(cfg.batch_size, ctx),
                           **common) if train else None, val, num_classes)
