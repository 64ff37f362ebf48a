"""What the builder needs to know about a dataset: classes, input size, stem family."""
from __future__ import annotations

from dataclasses import dataclass

from ..registry import Registry


@dataclass(frozen=True)
class DatasetInfo:
    """``family`` picks the network family: ``cifar`` (32x32 stems) or ``imagenet`` (224x224)."""

    name: str
    num_classes: int
    image_size: int
    family: str
    description: str


DATASET_INFO: Registry[DatasetInfo] = Registry("dataset")
for _info in (
    DatasetInfo("cifar10", 10, 32, "cifar", "CIFAR-10 (torchvision)"),
    DatasetInfo("cifar100", 100, 32, "cifar", "CIFAR-100 (torchvision)"),
    DatasetInfo("imagenet", 1000, 224, "imagenet", "ImageNet train/ and val/ image folders"),
    DatasetInfo("imagefolder", 0, 32, "cifar", "any train/ and val/ image folders (classes from folders)"),
    DatasetInfo("tiny-imagenet", 200, 64, "cifar", "Tiny-ImageNet, 64x64 (official layout; "
                "tools/prepare_tiny_imagenet.py sorts val/)"),
    DatasetInfo("fashion-mnist", 10, 28, "cifar", "Fashion-MNIST, 28x28 (offline: Debian's "
                "dataset-fashion-mnist, or --data)"),
    DatasetInfo("mnist", 10, 28, "cifar", "MNIST, 28x28 idx files (--data)"),
    DatasetInfo("digits", 10, 32, "cifar", "scikit-learn's 8x8 digits, upscaled to 32x32 (offline)"),
    DatasetInfo("synthetic", 10, 32, "cifar", "random tensors, for smoke tests and benchmarks"),
):
    DATASET_INFO.add(_info.name, _info)


def dataset_info(name: str) -> DatasetInfo:
    return DATASET_INFO.get(name)
