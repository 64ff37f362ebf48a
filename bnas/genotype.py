"""Genotypes: versioned JSON files describing an architecture, loaded and validated.

Two kinds exist. A *cell* genotype (searched, e.g. BNAS-A) lists, for the normal and the
reduction cell, each intermediate node's incoming edges as ``[operation, input]`` pairs (inputs
0 and 1 are the cell inputs ``c_{k-2}``, ``c_{k-1}``; intermediate nodes are numbered from 2)
and the nodes concatenated into the output. A *fixed* genotype describes a hand-designed
network (ResNet/VGG 1w1a) per dataset family (``cifar``, ``imagenet``); see
:mod:`bnas.families`.

Loading validates the graph with networkx and rejects unknown operations, bad input indices,
cycles, dead nodes and unreachable outputs with a message naming the node and edge.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from .errors import BnasError, unknown
from .families import validate_network
from .ops import OPS, SPACES
from .runio import atomic_write_text

FORMAT = 1
KINDS = ("cell", "fixed")
CELL_TYPES = ("normal", "reduce")


@dataclass(frozen=True)
class Cell:
    """One cell: ``nodes[i]`` holds the ``(op, input)`` edges of node ``i + 2``."""

    nodes: tuple[tuple[tuple[str, int], ...], ...]
    concat: tuple[int, ...]

    @property
    def edges(self) -> list[tuple[int, str, int]]:
        """``(node, op, input)`` for every edge, in file order."""
        return [(i + 2, op, j) for i, node in enumerate(self.nodes) for op, j in node]

    def to_json(self) -> dict[str, Any]:
        return {"nodes": [[[op, j] for op, j in node] for node in self.nodes],
                "concat": list(self.concat)}


@dataclass
class Genotype:
    """An architecture: cells for a cell-stacked network, or a fixed network description."""

    name: str | None = None
    kind: str = "cell"
    normal: Cell | None = None
    reduce: Cell | None = None
    space: str | None = None
    network: dict[str, dict[str, Any]] | None = None
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> dict[str, Cell]:
        return {"normal": self.normal, "reduce": self.reduce} if self.kind == "cell" else {}

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"format": FORMAT, "name": self.name, "kind": self.kind}
        if self.description:
            data["description"] = self.description
        if self.kind == "cell":
            data["space"] = self.space
            data["normal"] = self.normal.to_json()
            data["reduce"] = self.reduce.to_json()
        else:
            data["network"] = self.network
        if self.provenance:
            data["provenance"] = self.provenance
        return data


# -- parsing and validation ------------------------------------------------------------------
def _cell_from_json(data: Any, where: str) -> Cell:
    if not isinstance(data, dict) or "nodes" not in data or "concat" not in data:
        raise BnasError(f"{where}: a cell needs 'nodes' and 'concat'")
    nodes = []
    for i, node in enumerate(data["nodes"]):
        if not isinstance(node, list) or not node:
            raise BnasError(f"{where} node {i + 2}: expected a non-empty list of [op, input] edges")
        edges = []
        for e, edge in enumerate(node):
            if (not isinstance(edge, (list, tuple)) or len(edge) != 2 or not isinstance(edge[0], str)
                    or not isinstance(edge[1], int) or isinstance(edge[1], bool)):
                raise BnasError(f"{where} node {i + 2}, edge {e}: expected [op, input], got {edge!r}")
            edges.append((edge[0], edge[1]))
        nodes.append(tuple(edges))
    concat = data["concat"]
    if not isinstance(concat, list) or not concat or not all(isinstance(c, int) for c in concat):
        raise BnasError(f"{where}: 'concat' must be a non-empty list of node indices")
    return Cell(tuple(nodes), tuple(concat))


def validate_cell(cell: Cell, where: str, space: str | None = None) -> None:
    """Check ops, input indices, cycles, dead nodes and outputs of one cell (networkx graph)."""
    allowed = set(SPACES.get(space)) if space else None
    n_nodes = len(cell.nodes) + 2
    graph = nx.DiGraph()
    graph.add_nodes_from(range(n_nodes))
    graph.add_node("out")
    for node_idx, node in enumerate(cell.nodes):
        node_id = node_idx + 2
        for e, (op, j) in enumerate(node):
            loc = f"{where} node {node_id}, edge {e}"
            if op not in OPS:
                raise BnasError(f"{loc}: {unknown('operation', op, OPS.names())}")
            if allowed is not None and OPS.canonical(op) not in allowed:
                raise BnasError(f"{loc}: operation '{op}' is not in search space '{space}'")
            if not 0 <= j < n_nodes:
                raise BnasError(f"{loc}: input {j} refers to a node that does not exist "
                                f"(nodes are 0..{n_nodes - 1})")
            graph.add_edge(j, node_id)
    for c in cell.concat:
        if not 0 <= c < n_nodes:
            raise BnasError(f"{where}: output concatenates node {c}, which does not exist")
        if c < 2:
            raise BnasError(f"{where}: output concatenates cell input {c}; only intermediate "
                            f"nodes (2..{n_nodes - 1}) can be concatenated")
        graph.add_edge(c, "out")
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        path = " -> ".join(str(u) for u, _ in cycle) + f" -> {cycle[0][0]}"
        raise BnasError(f"{where}: cycle through nodes {path}")
    for node_id in range(2, n_nodes):
        if not nx.has_path(graph, node_id, "out"):
            raise BnasError(f"{where} node {node_id}: dead node (it reaches no output: not "
                            f"concatenated and no later node reads it)")
        if not any(nx.has_path(graph, src, node_id) for src in (0, 1)):
            raise BnasError(f"{where} node {node_id}: unreachable from the cell inputs")


def from_json(data: Any, source: str = "genotype") -> Genotype:
    """Parse and validate a genotype document."""
    if not isinstance(data, dict):
        raise BnasError(f"{source}: expected a JSON object")
    fmt = data.get("format")
    if fmt != FORMAT:
        raise BnasError(f"{source}: unsupported genotype format {fmt!r} (this version reads "
                        f"format {FORMAT})")
    kind = data.get("kind", "cell")
    if kind not in KINDS:
        raise BnasError(f"{source}: unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    name = data.get("name")
    common = dict(name=name, kind=kind, description=data.get("description", ""),
                  provenance=data.get("provenance", {}) or {})
    if kind == "fixed":
        network = data.get("network")
        if not isinstance(network, dict) or not network:
            raise BnasError(f"{source}: a fixed genotype needs a 'network' object per dataset family")
        for family, spec in network.items():
            validate_network(spec, f"{source} network '{family}'")
        return Genotype(network=network, **common)
    space = data.get("space")
    if space is not None and space not in SPACES:
        raise BnasError(f"{source}: {unknown('search space', space, SPACES.names())}")
    cells = {}
    for cell_type in CELL_TYPES:
        where = f"{source}: {cell_type} cell"
        cells[cell_type] = _cell_from_json(data.get(cell_type), where)
        validate_cell(cells[cell_type], where, space)
    return Genotype(space=space, **cells, **common)


# -- where genotypes live --------------------------------------------------------------------
def package_dir() -> Path:
    """The folder of genotypes shipped with bnas."""
    return Path(__file__).resolve().parent / "genotypes"


def user_dir() -> Path:
    """Where ``bnas search`` saves genotypes: ``$BNAS_GENOTYPE_DIR``, else
    ``$XDG_DATA_HOME/bnas/genotypes`` (``~/.local/share/bnas/genotypes``)."""
    if os.environ.get("BNAS_GENOTYPE_DIR"):
        return Path(os.environ["BNAS_GENOTYPE_DIR"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "bnas" / "genotypes"


def _search_dirs() -> list[Path]:
    return [user_dir(), package_dir()]


def names() -> list[str]:
    """Every genotype found by name: the user's and the shipped ones."""
    found = {p.stem for d in _search_dirs() if d.is_dir() for p in d.glob("*.json")}
    return sorted(found)


def find(name: str) -> Path | None:
    """The file of genotype ``name`` (user directory first), or None."""
    for d in _search_dirs():
        path = d / f"{name}.json"
        if path.is_file():
            return path
    return None


def load(name_or_path: str | os.PathLike | Genotype) -> Genotype:
    """Load a genotype by name (user directory, then shipped ones) or from a JSON file path."""
    if isinstance(name_or_path, Genotype):
        return name_or_path
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith(".json") or os.sep in text or path.is_file()):
        found = find(text)
        if found is None:
            raise BnasError(f"{unknown('architecture', text, names())} (by name: {user_dir()} and "
                            f"the shipped genotypes; a genotype elsewhere, e.g. saved with bnas "
                            f"search --genotype-dir DIR: give its path, DIR/{text}.json)")
        path = found
    if not path.is_file():
        raise BnasError(f"genotype file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BnasError(f"{path}: not valid JSON ({exc})") from None
    genotype = from_json(data, str(path))
    if genotype.name is None:
        genotype.name = path.stem
    return genotype


def save(genotype: Genotype, path: str | os.PathLike) -> Path:
    """Validate and write ``genotype`` as JSON to ``path`` atomically; returns the path."""
    data = genotype.to_json()
    from_json(json.loads(json.dumps(data)), str(path))  # never write what cannot be loaded
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return Path(path)
