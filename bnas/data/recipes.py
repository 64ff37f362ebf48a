"""How each project prepares its images: the normalisation of CIFAR and the ImageNet training
augmentation, by name (``--data-recipe``).

* ``bnas`` (Kim et al., ECCV 2020, the BNAS training scripts): CIFAR normalised with CIFAR-10's
  mean and std (CIFAR-100 too: BNAS's code has no CIFAR-100 statistics); ImageNet training
  crops with ``RandomResizedCrop(scale=(0.08, 1.0))``, flips and colour jitter
  ``ColorJitter(0.4, 0.4, 0.4, 0.2)``.
* ``seeds`` (the RBNN, ReCU and SiMaN code): CIFAR-10 normalised with ImageNet's mean and std,
  CIFAR-100 with its own ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276)); ImageNet training crops
  with ``RandomResizedCrop(scale=(0.08, 1.25))`` and flips, without colour jitter.

Validation is the same for both: CIFAR unchanged, ImageNet resized to 256 and centre-cropped to
224 (scaled with the image size).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..registry import Registry

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]
CIFAR10_STATS: Stats = ((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768))
CIFAR100_STATS: Stats = ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276))
IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class DataRecipe:
    """A project's image pipeline (module docstring)."""

    name: str
    cifar_stats: dict[str, Stats]
    crop_scale: tuple[float, float]
    color_jitter: bool


DATA_RECIPES: Registry[DataRecipe] = Registry("data recipe")
DATA_RECIPES.add("bnas", DataRecipe("bnas", {"cifar10": CIFAR10_STATS, "cifar100": CIFAR10_STATS},
                                    (0.08, 1.0), True))
DATA_RECIPES.add("seeds", DataRecipe("seeds", {"cifar10": IMAGENET_STATS,
                                               "cifar100": CIFAR100_STATS},
                                     (0.08, 1.25), False), aliases=("rbnn", "recu", "siman"))
