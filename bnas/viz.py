"""Diagrams of genotypes with graphviz, drawn like the searched-cell figures of the BNAS paper
(Kim, Singh, Choi, ECCV 2020) and of DARTS.

A cell genotype gives two diagrams, the normal and the reduction cell: the cell inputs
``c_{k-2}`` and ``c_{k-1}``, the intermediate nodes (numbered as in the genotype file, from 2),
the output ``c_{k}`` that concatenates them, and one edge per operation labelled with its name.
``zeroise`` edges are dashed and red: in BNAS they are real layers of the cell (they prune the
edge), not absent edges. The cell-level residual from ``c_{k-1}`` to ``c_{k}`` (identity in
normal cells, a real-valued BN -> 2x2/2 conv in reduction cells; the network's first cell has
none) is dotted.

A fixed genotype (a hand-designed network) gives one diagram per dataset family: its module
tree as a chain of blocks (containers boxed, binary blocks shaded).
"""
from __future__ import annotations

import os
from pathlib import Path

import graphviz
from torch import nn

from .binarize import get as get_binarizer
from .data.registry import DATASETS
from .errors import BnasError
from .genotype import Cell, Genotype, load
from .model.fixed import build_fixed
from .ops import OPS
from .profiling import weight_bits

FORMATS = ("pdf", "png", "svg")
ZEROISE = "zeroise"
CELL_TITLES = {"normal": "normal cell", "reduce": "reduction cell"}
_CONTAINERS = (nn.Sequential, nn.ModuleList)

_INPUT_STYLE = {"style": "filled", "fillcolor": "darkseagreen2", "shape": "rect"}
_NODE_STYLE = {"style": "filled", "fillcolor": "lightblue", "shape": "circle"}
_OUTPUT_STYLE = {"style": "filled", "fillcolor": "palegoldenrod", "shape": "rect"}
_ZEROISE_EDGE = {"style": "dashed", "color": "red", "fontcolor": "red"}
_RESIDUAL_EDGE = {"style": "dotted", "color": "gray40", "fontcolor": "gray40"}
_BINARY_BLOCK = {"style": "filled", "fillcolor": "lightblue", "shape": "box"}
_REAL_BLOCK = {"style": "filled", "fillcolor": "darkseagreen2", "shape": "box"}


def cell_digraph(cell: Cell, reduction: bool, title: str = "") -> graphviz.Digraph:
    """The diagram of one cell."""
    graph = graphviz.Digraph(graph_attr={"rankdir": "LR", "label": title, "labelloc": "b",
                                         "fontsize": "16", "fontname": "helvetica"},
                             node_attr={"fontsize": "16", "height": "0.5", "width": "0.5",
                                        "penwidth": "2", "fontname": "helvetica"},
                             edge_attr={"fontsize": "14", "fontname": "helvetica"})
    graph.node("c_{k-2}", **_INPUT_STYLE)
    graph.node("c_{k-1}", **_INPUT_STYLE)
    inputs = ["c_{k-2}", "c_{k-1}"]
    for node in range(2, len(cell.nodes) + 2):
        graph.node(str(node), **_NODE_STYLE)
    graph.node("c_{k}", **_OUTPUT_STYLE)
    for node, op, j in cell.edges:
        op = OPS.canonical(op)
        style = _ZEROISE_EDGE if op == ZEROISE else {}
        graph.edge(inputs[j] if j < 2 else str(j), str(node), label=op, **style)
    for node in cell.concat:
        graph.edge(str(node), "c_{k}", color="gray20")
    graph.edge("c_{k-1}", "c_{k}", label="residual (BN-conv 2x2/2)" if reduction else "residual",
               **_RESIDUAL_EDGE)
    return graph


def _block_label(name: str, module: nn.Module) -> str:
    """``name: Type`` and one line per convolution / linear layer inside."""
    lines = [f"{name}: {type(module).__name__}"]
    for m in module.modules():
        tag = "bin " if weight_bits(m) == 1 else ""
        if isinstance(m, nn.Conv2d):
            kernel = "x".join(str(k) for k in m.kernel_size)
            stride = f"/{m.stride[0]}" if m.stride[0] > 1 else ""
            lines.append(f"{tag}conv {kernel}{stride} {m.in_channels}->{m.out_channels}")
        elif isinstance(m, nn.Linear):
            lines.append(f"{tag}linear {m.in_features}->{m.out_features}")
    return "\n".join(lines)


def _add_blocks(graph: graphviz.Digraph, prefix: str, module: nn.Module, chain: list[str]) -> None:
    """Add ``module``'s children: containers as labelled clusters, anything else as one node."""
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, _CONTAINERS):
            with graph.subgraph(name=f"cluster_{path}") as sub:
                sub.attr(label=path, labelloc="t", style="rounded", color="gray50")
                _add_blocks(sub, f"{path}.", child, chain)
            continue
        binary = any(weight_bits(m) == 1 for m in child.modules())
        graph.node(path, _block_label(path, child), **(_BINARY_BLOCK if binary else _REAL_BLOCK))
        chain.append(path)


def network_digraph(model: nn.Module, title: str = "") -> graphviz.Digraph:
    """A network's module tree as a chain of blocks in registration order: containers
    (Sequential, ModuleList) become labelled boxes, blocks with binary weights are shaded blue."""
    graph = graphviz.Digraph(graph_attr={"rankdir": "TB", "label": title, "labelloc": "b",
                                         "fontname": "helvetica"},
                             node_attr={"fontname": "helvetica", "fontsize": "12"})
    chain: list[str] = []
    _add_blocks(graph, "", model, chain)
    for a, b in zip(chain, chain[1:]):
        graph.edge(a, b)
    return graph


def _render(graph: graphviz.Digraph, path: Path, fmt: str) -> Path:
    graph.format = fmt
    try:
        return Path(graph.render(filename=path.name, directory=str(path.parent), cleanup=True))
    except graphviz.ExecutableNotFound:
        raise BnasError("graphviz's 'dot' program was not found; install graphviz "
                        "(e.g. apt-get install graphviz)") from None
    except graphviz.CalledProcessError as exc:
        raise BnasError(f"graphviz failed to render {path.name}.{fmt}: {exc}") from None
    except OSError as exc:
        raise BnasError(f"cannot write {path}.{fmt}: {exc.strerror or exc}") from None


def _fixed_models(genotype: Genotype) -> list[tuple[str, nn.Module]]:
    """One model per dataset family of a fixed genotype, built with the plain scheme."""
    models = []
    for family, spec in genotype.network.items():
        num_classes = next((info.num_classes for _, info in DATASETS.items()
                            if info.family == family and info.num_classes > 0), 10)
        models.append((family, build_fixed(spec, num_classes, get_binarizer("plain"))))
    return models


def render_genotype(genotype: Genotype | str | os.PathLike, out_dir: str | os.PathLike = ".",
                    fmt: str = "pdf") -> list[Path]:
    """Render ``genotype`` (a :class:`Genotype`, name or file) into ``out_dir``.

    Writes ``<name>_normal.<fmt>`` and ``<name>_reduce.<fmt>`` for a cell genotype, and
    ``<name>_<family>.<fmt>`` per dataset family for a fixed one; returns the paths.
    """
    if fmt not in FORMATS:
        raise BnasError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
    genotype = load(genotype)
    name = genotype.name or "genotype"
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BnasError(f"output directory {out} is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BnasError(f"cannot create output directory {out}: {exc.strerror or exc}") from None
    if genotype.kind == "cell":
        graphs = [(f"{name}_{cell_type}",
                   cell_digraph(cell, cell_type == "reduce", f"{name}: {CELL_TITLES[cell_type]}"))
                  for cell_type, cell in genotype.cells().items()]
    else:
        graphs = [(f"{name}_{family}", network_digraph(model, f"{name} ({family})"))
                  for family, model in _fixed_models(genotype)]
    return [_render(graph, out / stem, fmt) for stem, graph in graphs]
