"""Cell-stacked networks for CIFAR-sized and ImageNet-sized inputs (BNAS, after DARTS)."""
from __future__ import annotations

import torch
from torch import nn

from ..binarize.base import Binarizer
from ..genotype import Genotype
from ..ops import RealConvOp
from .cell import EvalCell


def reduction_layers(layers: int) -> tuple[int, int]:
    """Cells that reduce: at L//3 and 2L//3."""
    return layers // 3, 2 * layers // 3


class CellNetwork(nn.Module):
    """Stem -> ``layers`` cells (channels double at each reduction) -> global pool -> Linear.

    The stem follows the dataset family: ``family="cifar"``: BN -> 3x3 conv (3 -> 3C) -> ReLU,
    real-valued; ``family="imagenet"``: two real 3x3 stride-2 stems (224 -> 56 -> 28) as in
    DARTS. ``drop_path_prob`` is set by the training engine.
    """

    def __init__(self, genotype: Genotype, c: int, layers: int, num_classes: int,
                 binarizer: Binarizer, family: str = "cifar") -> None:
        super().__init__()
        self.drop_path_prob = 0.0
        self.init_channels, self.layers = c, layers
        if family == "cifar":
            c_stem = 3 * c
            self.stem = RealConvOp(3, c_stem, 3, 1, 1)
            c_prev_prev = c_prev = c_stem
            reduction_prev = False
        else:
            self.stem0 = nn.Sequential(
                nn.Conv2d(3, c // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c // 2),
                nn.ReLU(), nn.Conv2d(c // 2, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c))
            self.stem1 = nn.Sequential(
                nn.ReLU(), nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c))
            c_prev_prev = c_prev = c
            reduction_prev = True
        self.family = family
        reductions = reduction_layers(layers)
        self.cells = nn.ModuleList()
        c_curr = c
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                c_curr *= 2
            spec = genotype.reduce if reduction else genotype.normal
            cell = EvalCell(spec, c_prev_prev, c_prev, c_curr, reduction, reduction_prev,
                            residual=i > 0, binarizer=binarizer,
                            preprocess_reduce_affine=family != "cifar")
            self.cells.append(cell)
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, cell.multiplier * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.family == "cifar":
            s0 = s1 = self.stem(x)
        else:
            s0 = self.stem0(x)
            s1 = self.stem1(s0)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
        return self.classifier(torch.flatten(self.global_pooling(s1), 1))
