"""Image transforms of the recipes (CIFAR crops and flips, ImageNet random-resized crops), with
each project's statistics and augmentation (:mod:`bnas.data.recipes`).

torchvision is imported when a transform is built, not with this module: importing it costs
resident memory (README, "Speed and memory") that runs on synthetic data or tensors never need.
"""
from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torchvision import transforms as T

from .recipes import CIFAR10_STATS, IMAGENET_STATS, DataRecipe, Stats

CIFAR_MEAN, CIFAR_STD = CIFAR10_STATS
IMAGENET_MEAN, IMAGENET_STD = IMAGENET_STATS


def _transforms() -> ModuleType:
    from torchvision import transforms

    return transforms


def cifar_transform(train: bool, stats: Stats = CIFAR10_STATS) -> T.Compose:
    """uint8 (3, 32, 32) tensor -> float normalised with ``stats`` (mean, std); training adds
    RandomCrop(32, 4) + flip."""
    T = _transforms()
    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []
    return T.Compose([*steps, T.ConvertImageDtype(torch.float32), T.Normalize(*stats)])


def imagenet_transform(size: int, train: bool, recipe: DataRecipe | None = None) -> T.Compose:
    """ImageNet: RandomResizedCrop(``recipe.crop_scale``) + flip (+ ColorJitter(0.4, 0.4, 0.4,
    0.2) where the recipe has it; BNAS's by default) for training; Resize(size * 8/7) +
    CenterCrop(size) (256 / 224) for validation."""
    T = _transforms()
    if train:
        scale, jitter = (recipe.crop_scale, recipe.color_jitter) if recipe else ((0.08, 1.0), True)
        steps = [T.RandomResizedCrop(size, scale=scale), T.RandomHorizontalFlip()]
        if jitter:
            steps.append(T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2))
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
