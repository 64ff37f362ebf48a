"""Every dataset by name: what the builder needs to know about it (classes, input size, network
family) and the function that builds its splits (:mod:`bnas.data.datasets`, imported on first
use, so that the names and sizes are known without torch)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..registry import Lazy, Registry

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from .datasets import DatasetOptions

#: ``builder(split, options)``: the split ``"train"`` or ``"val"`` of the dataset.
Builder = Callable[[str, "DatasetOptions"], "Dataset"]


@dataclass(frozen=True)
class DatasetInfo:
    """``family`` picks the network family: ``cifar`` (32x32 stems) or ``imagenet`` (224x224)."""

    name: str
    num_classes: int
    image_size: int
    family: str
    description: str
    builder: Builder


def _datasets(function: str, **bound: str) -> Lazy:
    return Lazy(f"bnas.data.datasets:{function}", **bound)


DATASETS: Registry[DatasetInfo] = Registry("dataset")
for _info in (
    DatasetInfo("cifar10", 10, 32, "cifar", "CIFAR-10 (torchvision)", _datasets("cifar", name="cifar10")),
    DatasetInfo("cifar100", 100, 32, "cifar", "CIFAR-100 (torchvision)",
                _datasets("cifar", name="cifar100")),
    DatasetInfo("imagenet", 1000, 224, "imagenet", "ImageNet train/ and val/ image folders",
                _datasets("imagenet")),
    DatasetInfo("imagefolder", 0, 32, "cifar", "any train/ and val/ image folders (classes from "
                "folders)", _datasets("imagefolder")),
    DatasetInfo("tiny-imagenet", 200, 64, "cifar", "Tiny-ImageNet, 64x64 (official layout; "
                "tools/prepare_tiny_imagenet.py sorts val/)", _datasets("tiny_imagenet")),
    DatasetInfo("fashion-mnist", 10, 28, "cifar", "Fashion-MNIST, 28x28 (offline: Debian's "
                "dataset-fashion-mnist, or --data)", _datasets("idx", name="fashion-mnist")),
    DatasetInfo("mnist", 10, 28, "cifar", "MNIST, 28x28 idx files (--data)",
                _datasets("idx", name="mnist")),
    DatasetInfo("digits", 10, 32, "cifar", "scikit-learn's 8x8 digits, upscaled to 32x32 (offline)",
                _datasets("digits")),
    DatasetInfo("synthetic", 10, 32, "cifar", "random tensors, for smoke tests and benchmarks",
                _datasets("synthetic")),
):
    DATASETS.add(_info.name, _info)


def dataset_info(name: str) -> DatasetInfo:
    return DATASETS.get(name)
