"""Helpers shared by the search tests: weight mapping between the two supernet implementations."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bnas.binarize import Binarizer
from bnas.search import topology
from bnas.search.cell import FastCell, ReferenceCell
from bnas.search.network import SearchNetwork


def edge_convs(cell: FastCell, node: int, source: int, op: str) -> dict[str, torch.nn.Module]:
    """The fast cell's convolutions of edge ``source -> node`` for operation ``op``:
    ``{"conv": ...}`` for a binary conv op, ``{"a": ..., "b": ...}`` for a strided skip."""
    fanout = cell.fanouts[source]
    position = [target for _, target in topology.outgoing(cell.steps, source)].index(node)
    if op in fanout.convs:
        return {"conv": fanout.convs[op][position]}
    if op in fanout.reduces:
        return dict(fanout.reduces[op][position].items())
    return {}


def edge_module(cell: FastCell, node: int, source: int, op: str) -> torch.nn.Module | None:
    """The fast cell's own module of edge ``source -> node`` for an operation the fast path
    computes edge by edge, else None."""
    fanout = cell.fanouts[source]
    position = [target for _, target in topology.outgoing(cell.steps, source)].index(node)
    return fanout.edge_ops[op][position] if op in fanout.edge_ops else None


def copy_cell(fast: FastCell, ref: ReferenceCell, op_names) -> None:
    """Give ``ref`` the weights (and binarizer state) of ``fast``."""
    for name in ("preprocess0", "preprocess1", "residual"):
        if getattr(fast, name) is not None:
            getattr(ref, name).load_state_dict(getattr(fast, name).state_dict())
    for row, (node, source) in enumerate(topology.edges(fast.steps)):
        mixed = ref.edges[row]
        for k, op in enumerate(op_names):
            for key, conv in edge_convs(fast, node, source, op).items():
                target = mixed.ops[k].conv if key == "conv" else getattr(mixed.ops[k], f"conv_{key}")
                target.load_state_dict(conv.state_dict())
            module = edge_module(fast, node, source, op)
            if module is not None:
                mixed.ops[k].load_state_dict(module.state_dict())


def copy_network(fast, ref) -> None:
    """Give the reference-path network ``ref`` every weight of the fast-path network ``fast``."""
    for name in ("stem", "classifier"):
        getattr(ref, name).load_state_dict(getattr(fast, name).state_dict())
    for f_cell, r_cell in zip(fast.cells, ref.cells):
        copy_cell(f_cell, r_cell, fast.op_names)
    with torch.no_grad():
        for a, b in zip(ref.arch_parameters(), fast.arch_parameters()):
            a.copy_(b)


def supernet_pair(binarizer: str | Binarizer, space: str, layers: int = 4, c: int = 4,
                  partial: int = 1) -> tuple[SearchNetwork, SearchNetwork]:
    """A float64 fast-path supernet with random architecture weights (betas too, with partial
    channels) and the reference-path supernet with the same weights, for 5 classes."""
    torch.manual_seed(1)
    fast = SearchNetwork(5, c=c, layers=layers, space=space, binarizer=binarizer, impl="fast",
                         partial=partial).double()
    ref = SearchNetwork(5, c=c, layers=layers, space=space, binarizer=binarizer,
                        impl="reference", partial=partial).double()
    with torch.no_grad():
        for alpha in fast.arch_parameters():
            alpha.normal_()
    copy_network(fast, ref)
    return fast, ref


def cross_entropy_step(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``net``'s logits for ``x``, after back-propagating their cross-entropy with ``y`` into
    freshly zeroed gradients."""
    net.zero_grad(set_to_none=True)
    out = net(x)
    F.cross_entropy(out, y).backward()
    return out.detach()
