"""A BNAS cell (:class:`bnas.model.cell.EvalCell`) run by the packed engine in steps.

The cell's preprocessing and its nodes run in steps: a step takes every operation whose input
is computed (the two preprocessings first; then each node whose inputs are), and runs the
binary convolutions of all its binary operations with one call of the kernels
(:func:`~bnas.deploy.kernels.convolve_all`), several at once, each on one thread, when the step
has at least as many as there are threads (two preprocessings on two threads): at batch 1 a
cell's convolutions are tens of microseconds each, too small for the threads to share one
well. States whose values never reach the cell's output (they feed only
``zeroise``) are not computed. The values are the float cell's: each node sums its edges in
the same order, the output is written as the float cell writes it (:func:`cell_output`, without
the autograd function around it).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import BnasError
from ..model.cell import PURE_OPS, EvalCell
from ..ops import Zero
from ..ops.lean import cell_output
from .kernels import convolve_all, kernels
from .layers import _BatchNormSign, _inference_only


class PackedEvalCell(EvalCell):
    """An :class:`EvalCell` whose operations are packed (:func:`bnas.deploy.convert.convert`
    sets this class on the converted cell), run in steps; inference only."""

    train = _inference_only

    @classmethod
    def adopt(cls, cell: nn.Module) -> None:
        """Make a converted float cell (its operations packed) one of this class."""
        cell.__class__ = cls

    def steps(self) -> list[list[tuple[int, list[tuple[nn.Module, int]]]]]:
        """The nodes in steps, each node with its edges ``(operation, source state)`` but
        ``zeroise``'s: a step holds every live node whose sources earlier steps computed
        (cached: the cell's structure does not change)."""
        cached = self.__dict__.get("_steps")
        if cached is not None:
            return cached
        edges, ops = [], iter(self.ops)
        for inputs in self.nodes:
            edges.append([(op, j) for op, j in ((next(ops), j) for j in inputs)
                          if not isinstance(op, Zero)])
        done = {j for j in (0, 1) if j in self.live}
        waiting, steps = [i for i in range(len(self.nodes)) if i + 2 in self.live], []
        while waiting:
            ready = [i for i in waiting if all(j in done for _, j in edges[i])]
            if not ready:
                raise BnasError(f"cell nodes {waiting} read states that are never computed")
            steps.append([(i, edges[i]) for i in ready])
            done.update(i + 2 for i in ready)
            waiting = [i for i in waiting if i not in ready]
        self.__dict__["_steps"] = steps
        return steps

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        n, _, h, w = s1.shape  # preprocess0 brings s0 to s1's size
        shape = (n, self.node_channels, -(-h // self.stride), -(-w // self.stride))
        states: dict[int, torch.Tensor | None] = {}
        shared: dict[tuple, torch.Tensor] = {}
        first = [(j, op, x) for j, op, x in ((0, self.preprocess0, s0), (1, self.preprocess1, s1))
                 if j in self.live]
        for (j, _, _), y in zip(first, run_step([(op, x) for _, op, x in first], shared)):
            states[j] = y
        for step in self.steps():
            items = [(op, states[j] if states[j] is not None else s1.new_zeros(shape))
                     for _, edges in step for op, j in edges]
            outs = iter(run_step(items, shared, [j for _, edges in step for _, j in edges]))
            for i, edges in step:
                total = None
                for _ in edges:
                    y = next(outs)
                    total = y if total is None else total + y
                states[i + 2] = total
        residual = None if self.residual is None else self.residual(s1)
        return cell_output(s1, shape, residual, [states.get(i) for i in self.concat])


def run_step(items: list[tuple[nn.Module, torch.Tensor]], shared: dict[tuple, torch.Tensor],
             sources: list[int] | None = None) -> list[torch.Tensor]:
    """``op(x)`` for each ``(op, x)`` of a step: the binary convolutions of the packed binary
    operations in one call of the kernels, the other operations as they are (an identical
    parameter-free operation of the same source state, in ``shared``, computed once). A binary
    operation with forward hooks (a per-layer timing, say) runs on its own, through them."""
    outs: list[torch.Tensor | None] = [None] * len(items)
    calls, owners = [], []
    for index, (op, x) in enumerate(items):
        if isinstance(op, _BatchNormSign) and not (op._forward_pre_hooks or op._forward_hooks):
            these = op.calls(x)
            calls += these
            owners.append((index, op, len(these)))
        elif isinstance(op, PURE_OPS) and sources is not None:
            key = (sources[index], type(op), op.extra_repr())
            outs[index] = shared[key] if key in shared else shared.setdefault(key, op(x))
        else:
            outs[index] = op(x)
    results = iter(convolve_all(kernels(), calls) if calls else ())
    for index, op, count in owners:
        outs[index] = op.finish([next(results) for _ in range(count)])
    return outs
