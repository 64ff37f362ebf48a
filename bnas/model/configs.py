"""Named model configurations of the BNAS paper (Table 2 and Table 3)."""
from __future__ import annotations

from dataclasses import dataclass

from ..registry import Registry


@dataclass(frozen=True)
class ModelConfig:
    """A genotype at a given size, for a dataset, with the training recipe it was published with."""

    name: str
    arch: str
    dataset: str
    layers: int
    init_channels: int
    recipe: str
    description: str


CONFIGS: Registry[ModelConfig] = Registry("configuration")
for _cfg in (
    ModelConfig("bnas-a", "latest_cell_zeroise", "cifar10", 20, 36, "bnas-cifar",
                "BNAS-A, CIFAR-10 (published 92.70% top-1)"),
    ModelConfig("bnas-d", "latest_cell", "imagenet", 12, 64, "bnas-imagenet",
                "BNAS-D, ImageNet (57.69 / 79.89)"),
    ModelConfig("bnas-e", "latest_cell", "imagenet", 12, 68, "bnas-imagenet",
                "BNAS-E, ImageNet (58.76 / 80.61)"),
    ModelConfig("bnas-f", "latest_cell", "imagenet", 15, 68, "bnas-imagenet",
                "BNAS-F, ImageNet (58.99 / 80.85)"),
    ModelConfig("bnas-g", "latest_cell", "imagenet", 11, 74, "bnas-imagenet",
                "BNAS-G, ImageNet (59.81 / 81.61)"),
    ModelConfig("bnas-h", "latest_cell", "imagenet", 16, 128, "bnas-imagenet-amp",
                "BNAS-H, ImageNet, mixed precision (63.51 / 83.91)"),
):
    CONFIGS.add(_cfg.name, _cfg)

# Cell-network size when neither a configuration nor --layers/--init-channels say otherwise.
DEFAULT_SIZE = {"cifar": (20, 36), "imagenet": (12, 64)}
