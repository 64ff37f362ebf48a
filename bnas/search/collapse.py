"""Collapse to parameter-free operations: the diagnostic and the controls from the literature.

Differentiable searches drift toward operations without weights: they make the supernet's
loss fall fastest early on, so their architecture weights grow before the convolutions have
learnt anything (DARTS+, Liang et al., arXiv:1909.06035, 2019, Sec. 3; P-DARTS, Chen et al.,
ICCV 2019, Sec. 3.3). Those papers count skip-connections, the parameter-free operation of
DARTS's space; BNAS's space has none by default, and there the collapse is to poolings (a short
``digits`` search ends with 6 of 8 normal-cell edges pooling). Here an operation is
*parameter-free* when its module at stride 1 holds no parameters: ``zeroise``, the poolings and
``skip`` (identity); the test asks the registry's factories, so a new operation is classified by
what it is.

- :func:`parameter_free_share`: per cell type, the share of a derived cell's edges that carry a
  parameter-free operation (logged every epoch and plotted under the alpha heatmaps);
- ``--arch-warmup E``: the first E epochs train the weights only, the architecture stays as
  initialised (PC-DARTS, Xu et al., ICLR 2020, Sec. 3.3 and 4.2: 15 warm-up epochs; P-DARTS
  Sec. 4.2: 10 per stage), so the convolutions are not judged before they have learnt;
- ``--max-param-free M`` (:func:`cap_parameter_free`): at most M parameter-free edges per derived
  cell. As P-DARTS's search-space regularisation (Sec. 3.3, M = 2 skip-connections): the M
  parameter-free choices of the derived cell with the largest weights keep them, the
  parameter-free weights of every other edge are set to 0, and the cell is derived again;
- ``--stop-param-free N``: stop the search after the first epoch whose derived normal cell has
  N or more parameter-free edges (DARTS+ Sec. 3.2, criterion 1: two skip-connections in the
  normal cell); the result is the best epoch up to then, as for a search that ran to its end.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from ..genotype import Cell, Genotype
from ..ops import OPS, make_op


@functools.cache
def is_parameter_free(op: str) -> bool:
    """Whether operation ``op`` (a name or alias) has no parameters at stride 1."""
    from ..binarize import get as get_binarizer

    module = make_op(OPS.canonical(op), 4, 1, get_binarizer("plain"))
    return not any(True for _ in module.parameters())


def count_parameter_free(cell: Cell) -> int:
    """How many of ``cell``'s edges carry a parameter-free operation."""
    return sum(is_parameter_free(op) for _, op, _ in cell.edges)


def parameter_free_share(genotype: Genotype) -> dict[str, float]:
    """Per cell type, the share of edges with a parameter-free operation."""
    return {name: count_parameter_free(cell) / len(cell.edges)
            for name, cell in genotype.cells().items()}


def cap_parameter_free(weights: torch.Tensor, op_names: Sequence[str], cell: Cell,
                       edge_rows: dict[tuple[int, int], int], cap: int) -> torch.Tensor | None:
    """The weights to derive again so that at most ``cap`` edges are parameter-free (P-DARTS):
    the ``cap`` strongest parameter-free choices of ``cell`` keep their weights, every other
    edge loses its parameter-free columns. None when ``cell`` is within the cap already."""
    free = [i for i, op in enumerate(op_names) if is_parameter_free(op)]
    chosen = [(float(weights[edge_rows[(node, j)], op_names.index(OPS.canonical(op))]),
               edge_rows[(node, j)]) for node, op, j in cell.edges if is_parameter_free(op)]
    if len(chosen) <= cap:
        return None
    keep = {row for _, row in sorted(chosen, key=lambda c: -c[0])[:cap]}
    capped = weights.clone()
    for row in range(capped.shape[0]):
        if row not in keep:
            capped[row, free] = 0.0
    return capped
