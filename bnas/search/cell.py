"""Search cells of the BNAS supernet (Kim et al., ECCV 2020, Sec. 3.2-3.3, Fig. 3).

The cell template is the evaluated cell's (:mod:`bnas.model.cell`): two inputs, ``steps``
intermediate nodes, every node summing an edge from each earlier node, the output
concatenating the intermediate nodes, and the cell-level residual (identity for normal
cells, a real BN -> 2x2/2 convolution for reductions, none in the first cell). While
searching, the inputs are preprocessed by *real* BN(affine=False) -> conv -> ReLU layers
(1x1, or 3x3/2 for ``c_{k-2}`` after a reduction), as in BNAS's search code; the evaluated
network uses binary preprocessing.

Two implementations compute the same function: ``"reference"`` (:class:`ReferenceCell`, one
:class:`~bnas.search.mixed.MixedOp` per edge, node by node) and ``"fast"``
(:class:`FastCell`, one :class:`~bnas.search.fanout.FanOut` per node).
"""
from __future__ import annotations

import torch
from torch import nn

from ..binarize.base import Binarizer
from ..model.cell import cell_residual
from ..ops import RealConvOp
from ..registry import Registry
from . import topology
from .autograd import LeanRealConvOp
from .fanout import FanOut
from .mixed import MixedOp


class SearchCell(nn.Module):
    """Preprocessing, residual and output shared by both implementations."""

    preprocess_class: type[RealConvOp] = RealConvOp

    def __init__(self, c_prev_prev: int, c_prev: int, c: int, reduction: bool,
                 reduction_prev: bool, residual: bool, space: str, binarizer: Binarizer,
                 steps: int = 4) -> None:
        super().__init__()
        self.reduction, self.steps, self.multiplier = reduction, steps, steps
        preprocess = self.preprocess_class
        if reduction_prev:
            self.preprocess0 = preprocess(c_prev_prev, c, 3, 2, 1, affine=False)
        else:
            self.preprocess0 = preprocess(c_prev_prev, c, 1, 1, 0, affine=False)
        self.preprocess1 = preprocess(c_prev, c, 1, 1, 0, affine=False)
        self.residual = cell_residual(c_prev, steps * c, reduction) if residual else None

    def stride(self, source: int) -> int:
        """Edges leaving a cell input of a reduction cell halve the resolution."""
        return 2 if self.reduction and source < 2 else 1

    def nodes(self, states: list[torch.Tensor], weights: torch.Tensor) -> list[torch.Tensor]:
        """The intermediate nodes, given the two preprocessed inputs."""
        raise NotImplementedError

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``weights``: the softmax of this cell type's alphas, ``(n_edges, n_ops)``."""
        nodes = self.nodes([self.preprocess0(s0), self.preprocess1(s1)], weights)
        out = torch.cat(nodes, dim=1)
        if self.residual is not None:
            out = out + self.residual(s1)
        return out


CELLS: Registry[type[SearchCell]] = Registry("search implementation")


@CELLS.register("reference")
class ReferenceCell(SearchCell):
    """One mixed operation per edge, evaluated edge by edge (the straightforward path)."""

    def __init__(self, *args, space: str, binarizer: Binarizer, steps: int = 4, **kwargs) -> None:
        super().__init__(*args, space=space, binarizer=binarizer, steps=steps, **kwargs)
        c = self.preprocess1.conv.out_channels
        self.edges = nn.ModuleList(MixedOp(c, self.stride(j), space, binarizer)
                                   for _, j in topology.edges(steps))

    def nodes(self, states: list[torch.Tensor], weights: torch.Tensor) -> list[torch.Tensor]:
        row = 0
        for node in range(2, self.steps + 2):
            total = 0
            for j in range(node):
                total = total + self.edges[row](states[j], weights[row])
                row += 1
            states.append(total)
        return states[2:]


@CELLS.register("fast")
class FastCell(SearchCell):
    """All edges leaving a node computed together by one :class:`FanOut` (see
    :mod:`bnas.search.fanout`); node ``i`` is complete once nodes ``0 .. i-1`` have fanned out."""

    preprocess_class = LeanRealConvOp

    def __init__(self, *args, space: str, binarizer: Binarizer, steps: int = 4, **kwargs) -> None:
        super().__init__(*args, space=space, binarizer=binarizer, steps=steps, **kwargs)
        c = self.preprocess1.conv.out_channels
        self.fanouts = nn.ModuleList()
        for source in range(steps + 1):
            rows = [row for row, _ in topology.outgoing(steps, source)]
            self.fanouts.append(FanOut(c, self.stride(source), space, binarizer, len(rows)))
            self.register_buffer(f"rows{source}", torch.tensor(rows, dtype=torch.long),
                                 persistent=False)

    def nodes(self, states: list[torch.Tensor], weights: torch.Tensor) -> list[torch.Tensor]:
        pending: dict[int, torch.Tensor] = {}
        for source, fanout in enumerate(self.fanouts):
            if source >= 2:
                states.append(pending.pop(source))
            out = fanout(states[source], weights.index_select(0, getattr(self, f"rows{source}")))
            for (_, target), part in zip(topology.outgoing(self.steps, source), out.unbind(1)):
                pending[target] = part if target not in pending else pending[target] + part
        states.append(pending.pop(self.steps + 1))
        return states[2:]
