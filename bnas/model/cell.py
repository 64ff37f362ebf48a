"""The evaluated BNAS cell (Kim et al., ECCV 2020, Sec. 3.2 and Fig. 3).

Inputs ``c_{k-2}``, ``c_{k-1}`` are preprocessed by binary BN-sign-conv-ReLU layers (3x3 stride 2
for ``c_{k-2}`` after a reduction), each intermediate node sums its edges, the output
concatenates the chosen nodes, and the *cell-level residual* adds ``c_{k-1}`` (normal cells) or a
real-valued BN -> Conv2d(k=2, s=2) downsample of it (reduction cells); the first cell has none.

The cell computes this in a lean way (same values and gradients) unless its ``lean`` attribute
is False: ``zeroise`` edges are not computed and nodes that sum only zeros are not stored; an
operation whose output only ever meets ``zeroise`` runs without autograd (so its BatchNorm
statistics and the scheme's weight projections update as usual) and its parameters get the zero
gradient they would get through the multiplication by zero; identical parameter-free operations
of one input (e.g. several ``max_pool_3x3`` of ``c_{k-2}``) are computed once; drop path is one
multiplication, fused into binary operations; the concatenation and the residual add write one
tensor (:class:`bnas.ops.lean.CellOutput`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..binarize.base import Binarizer, downsample_branch
from ..errors import BnasError
from ..genotype import Cell as CellSpec
from ..ops import BinConvOp, Identity, Zero, make_op
from ..ops.lean import CellOutput, drop_factor, set_lean

# Operations without parameters or state: equal modules on one input give equal outputs.
PURE_OPS = (nn.MaxPool2d, nn.AvgPool2d)


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the rest (FractalNet)."""
    return x * drop_factor(x.size(0), x, drop_prob)


def live_states(nodes: Sequence[Sequence[int]], op_is_zero: Sequence[bool],
                concat: Sequence[int]) -> set[int]:
    """The states (0, 1: preprocessed inputs; 2...: nodes) whose values reach the cell's output
    through something other than ``zeroise``; ``op_is_zero`` lists the edges in node order."""
    edges, k = [], 0
    for i, inputs in enumerate(nodes):
        edges += [(i + 2, j, op_is_zero[k + n]) for n, j in enumerate(inputs)]
        k += len(inputs)
    live = set(concat)
    for target, source, zero in reversed(edges):
        if target in live and not zero:
            live.add(source)
    return live


def cell_residual(c_prev: int, c_out: int, reduction: bool) -> nn.Module:
    """BNAS's cell-level skip: identity for normal cells, BN -> 2x2/2 conv for reductions (a
    downsample branch)."""
    if reduction:
        return downsample_branch(nn.Sequential(nn.BatchNorm2d(c_prev),
                                               nn.Conv2d(c_prev, c_out, 2, stride=2, bias=True)))
    if c_prev != c_out:
        raise BnasError(f"a normal cell's residual needs {c_out} input channels, got {c_prev}")
    return nn.Identity()


class EvalCell(nn.Module):
    """A cell of a network built from a genotype."""

    lean = True

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
        set_lean(self, True)  # its binary operations train through bnas.ops.lean
        self.node_channels = c
        zero = [isinstance(op, Zero) for op in self.ops]
        self.live = live_states(self.nodes, zero, self.concat)
        self.stride = 2 if reduction else 1

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        if self.lean and not torch.is_autocast_enabled(s0.device.type):
            return self.forward_lean(s0, s1, drop_prob)
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

    def forward_lean(self, s0: torch.Tensor, s1: torch.Tensor,
                     drop_prob: float = 0.0) -> torch.Tensor:
        """:meth:`forward` without the work and memory that ``zeroise`` makes useless (see the
        module docstring). Drop-path masks are drawn in the same order as :meth:`forward`."""
        drop = self.training and drop_prob > 0.0
        dead: list[nn.Parameter] = []
        states: list[torch.Tensor | None] = [self._run(self.preprocess0, 0, s0, dead),
                                             self._run(self.preprocess1, 1, s1, dead)]
        x0 = states[0]
        n, _, h, w = x0.shape
        node_shape = (n, self.node_channels, -(-h // self.stride), -(-w // self.stride))
        shared: dict[tuple, torch.Tensor] = {}
        ops = iter(self.ops)
        for index, inputs in enumerate(self.nodes):
            total: torch.Tensor | None = None
            for j in inputs:
                op = next(ops)
                factor = None
                if drop and not isinstance(op, Identity):
                    factor = drop_factor(n, x0, drop_prob)
                if isinstance(op, Zero):
                    continue
                x = states[j] if states[j] is not None else x0.new_zeros(node_shape)
                if index + 2 not in self.live:
                    y = self._run(op, index + 2, x, dead)
                elif isinstance(op, PURE_OPS):
                    key = (j, type(op), op.extra_repr())
                    y = shared[key] if key in shared else shared.setdefault(key, op(x))
                    y = y if factor is None else y * factor
                elif isinstance(op, BinConvOp):
                    y = op(x, factor)
                else:
                    y = op(x) if factor is None else op(x) * factor
                total = y if total is None else total + y
            states.append(total)
        residual = None if self.residual is None else self.residual(s1)
        return CellOutput.apply(x0, node_shape, residual, len(dead), *dead,
                                *(states[i] for i in self.concat))

    def _run(self, module: nn.Module, state: int, x: torch.Tensor,
             dead: list[nn.Parameter]) -> torch.Tensor:
        """``module(x)``; without autograd when ``state`` is dead (its parameters join ``dead``)."""
        if state in self.live:
            return module(x)
        dead += [p for p in module.parameters() if p.requires_grad]
        with torch.no_grad():
            return module(x)
