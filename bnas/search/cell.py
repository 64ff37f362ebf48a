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
(:class:`FastCell`, one :class:`~bnas.search.fanout.FanOut` per node). With partial channels
(PC-DARTS, :mod:`bnas.search.partial`) both build their mixed operations for ``C/K`` channels
and add the bypassed channels, the shuffle and the edge-normalisation weights around them: the
reference path edge by edge, the fast path once per node (:meth:`FastCell._partial_nodes`).
"""
from __future__ import annotations

import torch
from torch import nn

from ..binarize.base import Binarizer
from ..model.cell import cell_residual
from ..ops import RealConvOp
from ..registry import Registry
from . import partial as pc
from . import topology
from .autograd import LeanRealConvOp
from .fanout import FanOut
from .mixed import MixedOp


class SearchCell(nn.Module):
    """Preprocessing, residual and output shared by both implementations."""

    preprocess_class: type[RealConvOp] = RealConvOp

    def __init__(self, c_prev_prev: int, c_prev: int, c: int, reduction: bool,
                 reduction_prev: bool, residual: bool, space: str, binarizer: Binarizer,
                 steps: int = 4, partial: int = 1) -> None:
        super().__init__()
        pc.check(c, partial)
        self.reduction, self.steps, self.multiplier = reduction, steps, steps
        self.partial = partial
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

    @property
    def edge_channels(self) -> int:
        """The channels an edge's mixed operation sees (all, or ``C/K`` with partial channels)."""
        return self.preprocess1.conv.out_channels // self.partial

    def nodes(self, states: list[torch.Tensor], weights: torch.Tensor,
              edge_weights: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The intermediate nodes, given the two preprocessed inputs; ``edge_weights``
        ``(n_edges,)`` scale the edges' outputs (edge normalisation) when given."""
        raise NotImplementedError

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                edge_weights: torch.Tensor | None = None) -> torch.Tensor:
        """``weights``: the softmax of this cell type's alphas, ``(n_edges, n_ops)``;
        ``edge_weights``: its normalised betas (partial channels) or None."""
        nodes = self.nodes([self.preprocess0(s0), self.preprocess1(s1)], weights, edge_weights)
        out = torch.cat(nodes, dim=1)
        if self.residual is not None:
            out = out + self.residual(s1)
        return out


CELLS: Registry[type[SearchCell]] = Registry("search implementation")


@CELLS.register("reference")
class ReferenceCell(SearchCell):
    """One mixed operation per edge, evaluated edge by edge (the reference path)."""

    def __init__(self, *args, space: str, binarizer: Binarizer, steps: int = 4, **kwargs) -> None:
        super().__init__(*args, space=space, binarizer=binarizer, steps=steps, **kwargs)
        self.edges = nn.ModuleList(MixedOp(self.edge_channels, self.stride(j), space, binarizer)
                                   for _, j in topology.edges(steps))

    def through(self, x: torch.Tensor, source: int):
        """The part of node ``x`` that enters the mixed operations leaving ``source``, and a
        function completing one edge's output (bypassed channels and shuffle; PC-DARTS)."""
        if self.partial == 1:
            return x, lambda out: out
        inner, rest = pc.split(x, self.partial)
        rest = pc.bypass(rest, self.stride(source))
        return inner, lambda out: pc.combine(out, rest, self.partial)

    def nodes(self, states: list[torch.Tensor], weights: torch.Tensor,
              edge_weights: torch.Tensor | None = None) -> list[torch.Tensor]:
        row = 0
        for node in range(2, self.steps + 2):
            total = 0
            for j in range(node):
                inner, complete = self.through(states[j], j)
                out = complete(self.edges[row](inner, weights[row]))
                if edge_weights is not None:
                    out = edge_weights[row] * out
                total = total + out
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
        self.fanouts = nn.ModuleList()
        for source in range(steps + 1):
            rows = [row for row, _ in topology.outgoing(steps, source)]
            self.fanouts.append(FanOut(self.edge_channels, self.stride(source), space, binarizer,
                                       len(rows)))
            self.register_buffer(f"rows{source}", torch.tensor(rows, dtype=torch.long),
                                 persistent=False)

    def nodes(self, states: list[torch.Tensor], weights: torch.Tensor,
              edge_weights: torch.Tensor | None = None) -> list[torch.Tensor]:
        if self.partial > 1:
            return self._partial_nodes(states, weights, edge_weights)
        pending: dict[int, torch.Tensor] = {}
        for source, fanout in enumerate(self.fanouts):
            if source >= 2:
                states.append(pending.pop(source))
            out = fanout(states[source], weights.index_select(0, getattr(self, f"rows{source}")))
            for (row, target), part in zip(topology.outgoing(self.steps, source), out.unbind(1)):
                if edge_weights is not None:
                    part = edge_weights[row] * part
                pending[target] = part if target not in pending else pending[target] + part
        states.append(pending.pop(self.steps + 1))
        return states[2:]

    def _partial_nodes(self, states: list[torch.Tensor], weights: torch.Tensor,
                       edge_weights: torch.Tensor | None) -> list[torch.Tensor]:
        """The nodes with partial channels, edge by edge what the reference path computes, but
        summed per node before the shuffle: ``shuffle(cat(., .))`` is linear and the same for
        every edge, so node ``i`` is ``shuffle(cat(sum_j b_ij m_ij, sum_j b_ij r_j))`` with
        ``m_ij`` the mixed operation's ``C/K`` channels and ``r_j`` the bypassed channels of
        node ``j``. Each beta multiplies its edge's operation weights (the mixed operation is
        linear in them), so no edge's output is materialised at ``C`` channels, nothing at
        ``C`` channels is kept for the backward pass but the bypassed channels of each node (for
        the betas' gradients), and each node is shuffled once."""
        mixed: dict[int, torch.Tensor] = {}
        bypassed: dict[int, torch.Tensor] = {}

        def add(sums: dict[int, torch.Tensor], target: int, term: torch.Tensor) -> None:
            sums[target] = term if target not in sums else sums[target] + term

        def node(target: int) -> torch.Tensor:
            return pc.combine(mixed.pop(target), bypassed.pop(target), self.partial)

        for source, fanout in enumerate(self.fanouts):
            if source >= 2:
                states.append(node(source))
            inner, rest = pc.split(states[source], self.partial)
            rest = pc.bypass(rest, self.stride(source))
            rows = getattr(self, f"rows{source}")
            w = weights.index_select(0, rows)
            betas = None if edge_weights is None else edge_weights.index_select(0, rows)
            out = fanout(inner, w if betas is None else w * betas.unsqueeze(1))
            for e, (_, target) in enumerate(topology.outgoing(self.steps, source)):
                add(mixed, target, out[:, e])
                add(bypassed, target, rest if betas is None else betas[e] * rest)
        states.append(node(self.steps + 1))
        return states[2:]
