"""The edges of a search cell and how they map to rows of the architecture parameters.

A cell has two input nodes (0: ``c_{k-2}``, 1: ``c_{k-1}``) and ``steps`` intermediate nodes
``2 .. steps + 1``; node ``i`` has an edge from every earlier node. The architecture
parameters of a cell type are a ``(n_edges, n_ops)`` matrix whose rows list the edges node by
node, inputs in increasing order (DARTS, Liu et al., ICLR 2019, Sec. 2.1; BNAS keeps this).
"""
from __future__ import annotations


def edges(steps: int) -> list[tuple[int, int]]:
    """``(node, input)`` for every edge, in row order."""
    return [(node, j) for node in range(2, steps + 2) for j in range(node)]


def n_edges(steps: int) -> int:
    """Number of edges (rows of the alpha matrix): 14 for 4 steps."""
    return len(edges(steps))


def outgoing(steps: int, source: int) -> list[tuple[int, int]]:
    """``(row, target node)`` of the edges leaving node ``source``, targets increasing."""
    return [(row, node) for row, (node, j) in enumerate(edges(steps)) if j == source]
