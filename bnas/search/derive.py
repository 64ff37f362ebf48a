"""Deriving a genotype from the architecture weights (BNAS, Kim et al., ECCV 2020, Sec. 3.3).

For each intermediate node, keep the two incoming edges whose strongest operation weighs most
and take the strongest operation on each (DARTS, Liu et al., ICLR 2019, Sec. 2.4). Unlike
DARTS, ``zeroise`` competes in both choices: in BNAS it is a real layer that prunes an edge,
not a placeholder for "no edge".

The *transferability* factor ``gamma`` (BNAS Sec. 3.3, "large datasets want fewer zeroise
layers") divides the ``zeroise`` weight of every edge before both choices; ``gamma = 1``
gives the CIFAR genotype. (BNAS's code divides the first edge's row instead of the zeroise
column, so its ``gamma`` never changes the result; here it does what the paper says.)

Ties keep the earlier input and the earlier operation, as BNAS's code does.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import BnasError
from ..genotype import Cell, Genotype
from ..ops import OPS
from . import topology

ZEROISE = "zeroise"


def _pick(table: torch.Tensor, names: Sequence[str], steps: int) -> Cell:
    """Two strongest incoming edges per node, the strongest operation on each."""
    rows = table.tolist()
    edge_rows = {edge: row for row, edge in enumerate(topology.edges(steps))}
    nodes = []
    for node in range(2, steps + 2):
        candidates = [(j, rows[edge_rows[(node, j)]]) for j in range(node)]
        strongest = sorted(candidates, key=lambda item: -max(item[1]))[:2]
        nodes.append(tuple((names[row.index(max(row))], j) for j, row in strongest))
    return Cell(tuple(nodes), tuple(range(2, steps + 2)))


def derive_cell(weights: torch.Tensor, op_names: Sequence[str], steps: int,
                gamma: float = 1.0, max_param_free: int | None = None) -> Cell:
    """The cell for softmax weights ``(n_edges, n_ops)``; ``gamma`` down-weights zeroise;
    ``max_param_free`` caps the parameter-free edges (P-DARTS, :mod:`bnas.search.collapse`)."""
    from .collapse import cap_parameter_free

    if gamma <= 0:
        raise BnasError(f"gamma must be positive, got {gamma:g}")
    table = weights.detach().double().cpu().clone()
    names = [OPS.canonical(n) for n in op_names]
    if ZEROISE in names:
        table[:, names.index(ZEROISE)] /= gamma
    cell = _pick(table, names, steps)
    if max_param_free is not None:
        edge_rows = {edge: row for row, edge in enumerate(topology.edges(steps))}
        capped = cap_parameter_free(table, names, cell, edge_rows, max_param_free)
        if capped is not None:
            cell = _pick(capped, names, steps)
    return cell


def derive(weights: dict[str, torch.Tensor], op_names: Sequence[str], steps: int, space: str,
           gamma: float = 1.0, name: str | None = None,
           max_param_free: int | None = None) -> Genotype:
    """A cell genotype from ``{"normal": ..., "reduce": ...}`` softmax weights."""
    return Genotype(name=name, kind="cell", space=space,
                    normal=derive_cell(weights["normal"], op_names, steps, gamma, max_param_free),
                    reduce=derive_cell(weights["reduce"], op_names, steps, gamma, max_param_free))
