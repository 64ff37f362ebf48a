"""Image transforms of the recipes (BNAS / DARTS CIFAR, BNAS ImageNet).

torchvision is imported when a transform is built, not with this module: importing it costs
about 190 MB of resident memory, which runs on synthetic data or tensors never need.
"""
from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torchvision import transforms as T

CIFAR_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR_STD = (0.24703233, 0.24348505, 0.26158768)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _transforms() -> ModuleType:
    from torchvision import transforms

    return transforms


def cifar_transform(train: bool) -> T.Compose:
    """uint8 (3, 32, 32) tensor -> normalised float; training adds RandomCrop(32, 4) + flip."""
    T = _transforms()
    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []
    return T.Compose([*steps, T.ConvertImageDtype(torch.float32), T.Normalize(CIFAR_MEAN, CIFAR_STD)])


def imagenet_transform(size: int, train: bool) -> T.Compose:
    """BNAS ImageNet: RandomResizedCrop + flip + ColorJitter(0.4, 0.4, 0.4, 0.2) for training;
    Resize(size * 8/7) + CenterCrop(size) (256 / 224) for validation."""
    T = _transforms()
    if train:
        steps = [T.RandomResizedCrop(size), T.RandomHorizontalFlip(),
                 T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2)]
    else:
        steps = [T.Resize(round(size * 256 / 224)), T.CenterCrop(size)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def small_folder_transform(size: int, train: bool) -> T.Compose:
    """Small image folders: resize to ``size`` (random crop + flip when training)."""
    T = _transforms()
    steps = [T.Resize((size, size))]
    if train:
        steps += [T.RandomCrop(size, padding=size // 8), T.RandomHorizontalFlip()]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
