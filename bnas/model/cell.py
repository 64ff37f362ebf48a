"""The evaluated BNAS cell (Kim et al., ECCV 2020, Sec. 3.2 and Fig. 3).

Inputs ``c_{k-2}``, ``c_{k-1}`` are preprocessed by binary BN-sign-conv-ReLU layers (3x3 stride 2
for ``c_{k-2}`` after a reduction), each intermediate node sums its edges, the output
concatenates the chosen nodes, and the *cell-level residual* adds ``c_{k-1}`` (normal cells) or a
real-valued BN -> Conv2d(k=2, s=2) downsample of it (reduction cells); the first cell has none.
"""
from __future__ import annotations

import torch
from torch import nn

from ..binarize.base import Binarizer
from ..errors import BnasError
from ..genotype import Cell as CellSpec
from ..ops import BinConvOp, Identity, make_op


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the rest (FractalNet)."""
    keep = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


def cell_residual(c_prev: int, c_out: int, reduction: bool) -> nn.Module:
    """BNAS's cell-level skip: identity for normal cells, BN -> 2x2/2 conv for reductions."""
    if reduction:
        return nn.Sequential(nn.BatchNorm2d(c_prev), nn.Conv2d(c_prev, c_out, 2, stride=2, bias=True))
    if c_prev != c_out:
        raise BnasError(f"a normal cell's residual needs {c_out} input channels, got {c_prev}")
    return nn.Identity()


class EvalCell(nn.Module):
    """A cell of a network built from a genotype."""

    def __init__(self, spec: CellSpec, c_prev_prev: int, c_prev: int, c: int, reduction: bool,
                 reduction_prev: bool, residual: bool, binarizer: Binarizer,
                 preprocess_reduce_affine: bool = True) -> None:
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = BinConvOp(c_prev_prev, c, 3, 2, 1, binarizer,
                                         affine=preprocess_reduce_affine)
        else:
            self.preprocess0 = BinConvOp(c_prev_prev, c, 1, 1, 0, binarizer)
        self.preprocess1 = BinConvOp(c_prev, c, 1, 1, 0, binarizer)
        self.nodes = [[j for _, j in node] for node in spec.nodes]
        self.concat = list(spec.concat)
        self.multiplier = len(self.concat)
        self.ops = nn.ModuleList(
            make_op(op, c, 2 if reduction and j < 2 else 1, binarizer)
            for node in spec.nodes for op, j in node)
        self.residual = cell_residual(c_prev, self.multiplier * c, reduction) if residual else None

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        ops = iter(self.ops)
        for inputs in self.nodes:
            total = 0
            for j in inputs:
                op = next(ops)
                h = op(states[j])
                if self.training and drop_prob > 0.0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                total = total + h
            states.append(total)
        out = torch.cat([states[i] for i in self.concat], dim=1)
        if self.residual is not None:
            out = out + self.residual(s1)
        return out
