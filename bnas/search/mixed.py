"""Mixed operations of the BNAS supernet, in two implementations that compute the same maths.

An edge ``(i, j)`` of a search cell outputs the softmax-weighted sum of every candidate
operation of the search space applied to node ``j`` (DARTS, Liu et al., ICLR 2019, Eq. 2;
BNAS, Kim et al., ECCV 2020, Sec. 3.3: ``zeroise`` is one of the candidates and counts in
the sum). While searching, every BatchNorm is ``affine=False`` and each pooling is followed
by its own BatchNorm.

:class:`MixedOp` is the reference path (``--impl reference``): one module per edge and
candidate, evaluated one after the other. The fast path (``--impl fast``),
:class:`~bnas.search.fanout.FanOut`, computes all the edges that leave one node together and
is tested against this one.
"""
from __future__ import annotations

import torch
from torch import nn

from ..binarize.base import Binarizer
from ..ops import SPACES, make_op

POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def search_op(name: str, c: int, stride: int, binarizer: Binarizer) -> nn.Module:
    """Candidate ``name`` as the supernet uses it: BatchNorms without affine parameters and a
    ``BatchNorm(affine=False)`` after each pooling (BNAS's search operations)."""
    op = make_op(name, c, stride, binarizer, affine=False)
    if isinstance(op, POOLS):
        op = nn.Sequential(op, nn.BatchNorm2d(c, affine=False))
    return op


class MixedOp(nn.Module):
    """One edge on the reference path: ``sum_k w_k * op_k(x)`` over every candidate."""

    def __init__(self, c: int, stride: int, space: str, binarizer: Binarizer) -> None:
        super().__init__()
        self.ops = nn.ModuleList(search_op(name, c, stride, binarizer) for name in SPACES.get(space))

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.ops))
