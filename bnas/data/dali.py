"""An optional ImageNet loader on NVIDIA DALI (``--loader dali``): JPEG decoding and the
recipes' augmentation on the GPU.

Reads the same ``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG`` folders as the torchvision
loader, with the data recipe's ImageNet augmentation
(:func:`bnas.data.transforms.imagenet_transform`, :mod:`bnas.data.recipes`) for training:
random-resized crop (area 8%-100% for BNAS, 8%-125% for the seeds, aspect 3/4-4/3) +
horizontal flip, and for BNAS colour jitter (brightness, contrast, saturation in [0.6, 1.4],
hue +-0.2 of the colour circle); resize of the shorter side to ``size * 8/7`` + centre crop for
validation. DALI applies the
jitter in one fixed order (torchvision shuffles it), and its shuffling follows its own seed, so
a resumed run sees other batches than an uninterrupted one would.

Written against DALI's documented API (``nvidia.dali.pipeline_def``, ``fn.readers.file``,
``fn.decoders``, ``nvidia.dali.plugin.pytorch.DALIClassificationIterator``); DALI is imported
only when this loader is used.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import BnasError
from .recipes import DATA_RECIPES, DataRecipe
from .transforms import IMAGENET_MEAN, IMAGENET_STD

INSTALL_HINT = ("--loader dali needs NVIDIA DALI (pip install nvidia-dali-cuda120, see "
                "https://docs.nvidia.com/deeplearning/dali/user-guide/docs/installation.html); "
                "or use --loader torch")


def require_dali() -> Any:
    """The ``nvidia.dali`` module, or a :class:`BnasError` saying how to install it."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError:
        raise BnasError(INSTALL_HINT) from None
    return nvidia.dali


def _pipeline(dali: Any, folder: Path, train: bool, size: int, shard_id: int, num_shards: int,
              batch_size: int, workers: int, device_id: int, seed: int,
              recipe: DataRecipe) -> Any:
    fn, types = dali.fn, dali.types
    mean = [m * 255 for m in IMAGENET_MEAN]
    std = [s * 255 for s in IMAGENET_STD]

    @dali.pipeline_def(batch_size=batch_size, num_threads=max(workers, 1), device_id=device_id,
                       seed=seed + shard_id)
    def pipeline():
        jpegs, labels = fn.readers.file(file_root=str(folder), shard_id=shard_id,
                                        num_shards=num_shards, random_shuffle=train,
                                        pad_last_batch=not train, name="Reader")
        if train:
            images = fn.decoders.image_random_crop(jpegs, device="mixed", output_type=types.RGB,
                                                   random_area=list(recipe.crop_scale),
                                                   random_aspect_ratio=[3 / 4, 4 / 3])
            images = fn.resize(images, resize_x=size, resize_y=size)
            if recipe.color_jitter:
                images = fn.color_twist(images,
                                        brightness=fn.random.uniform(range=[0.6, 1.4]),
                                        contrast=fn.random.uniform(range=[0.6, 1.4]),
                                        saturation=fn.random.uniform(range=[0.6, 1.4]),
                                        hue=fn.random.uniform(range=[-72.0, 72.0]))
            mirror = fn.random.coin_flip(probability=0.5)
            images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                              mean=mean, std=std, mirror=mirror)
        else:
            images = fn.decoders.image(jpegs, device="mixed", output_type=types.RGB)
            images = fn.resize(images, resize_shorter=round(size * 256 / 224))
            images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                              crop=(size, size), mean=mean, std=std)
        return images, labels.gpu()

    pipe = pipeline()
    pipe.build()
    return pipe


class DaliLoader:
    """Batches ``(images, labels)`` on this process's GPU from a DALI pipeline."""

    def __init__(self, root: str | Path, split: str, *, batch_size: int, size: int, rank: int,
                 world_size: int, workers: int, device: torch.device, seed: int,
                 recipe: str = "bnas") -> None:
        dali = require_dali()
        from nvidia.dali.plugin.pytorch import DALIClassificationIterator, LastBatchPolicy

        if device.type != "cuda":
            raise BnasError("--loader dali runs on GPUs; use --loader torch on the CPU")
        folder = Path(root).expanduser() / split
        if not folder.is_dir():
            raise BnasError(f"image folder not found: {folder} (expected {root}/{split}/<class>/*.JPEG)")
        train = split == "train"
        pipe = _pipeline(dali, folder, train, size, rank, world_size, batch_size, workers,
                         device.index or 0, seed, DATA_RECIPES.get(recipe))
        policy = LastBatchPolicy.DROP if train else LastBatchPolicy.PARTIAL
        self.iterator = DALIClassificationIterator([pipe], reader_name="Reader",
                                                   last_batch_policy=policy, auto_reset=True)

    def set_epoch(self, epoch: int) -> None:
        """DALI reshuffles by itself every epoch."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.iterator:
            yield batch[0]["data"], batch[0]["label"].squeeze(-1).long()

    def __len__(self) -> int:
        return len(self.iterator)
