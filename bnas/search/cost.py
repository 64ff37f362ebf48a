"""Searching for cost as well as accuracy: the expected cost of the supernet's architecture.

**Expected cost** (ProxylessNAS, Cai, Zhu, Han, ICLR 2019, Sec. 3.3, "E[latency_i] =
sum_j p_j F(o_j)"; FBNet, Wu et al., CVPR 2019, Eq. 6). Every edge ``e`` of every cell ``l`` of
the network *as it will be retrained* (``--cost-layers`` cells of ``--cost-init-channels``
channels at ``--cost-image-size``: BNAS-A's 20 cells, C=36, for CIFAR by default; not the small
supernet) costs the softmax-weighted sum of its candidate operations' costs::

    C(alpha) = C_fixed + sum_l sum_e sum_k softmax(alpha_{t(l), e})_k * c_{l, e, k}

where ``t(l)`` is the cell's type (normal or reduction: every cell of a type shares its
alphas), ``c_{l, e, k}`` is what operation ``k`` costs on edge ``e`` of cell ``l`` (at that
cell's channels and resolution, strided on a reduction cell's input edges) and ``C_fixed`` is
what the rest of the network costs (stem, the cells' preprocessing and residual convolutions,
classifier), the same for every architecture. ``zeroise`` and the poolings cost nothing in the
counting kinds; every edge counts, so driving an edge to ``zeroise`` is how the search saves.

**Kinds** (:data:`COST_KINDS`): ``ops``, ``bops`` and ``flops`` are :mod:`bnas.profiling`'s
counts (what ``bnas show`` prints), taken from one profiled forward pass per operation and
shape; ``latency`` is a table measured with the packed engine (:mod:`bnas.search.latency`).
``C(alpha)`` of a one-hot architecture is exactly the cost of the network built from it.

**Objective.** With ``--cost-weight W`` alone, the term added to the architecture loss
(:class:`bnas.search.architect.Architect`) is ProxylessNAS's additive expected cost, divided by
the cost of the most expensive one-hot architecture so that one weight means the same in every
space, dataset and kind (the term lies in ``[C_fixed / C_max, 1]``)::

    W * C(alpha) / C_max,    C_max = C_fixed + sum_t sum_e max_k sum_{l of type t} c_{l, e, k}

With ``--cost-target T`` the cost is driven toward a budget instead, through the ratio
``r = C(alpha) / T`` (scale-free, so again one weight means the same everywhere), with one of
the penalties of :data:`PENALTIES`: ``hinge`` ``W * max(0, r - 1)`` (only an architecture over
budget pays); ``log`` ``W * max(0, log r)``, MnasNet's hard constraint (Tan et al., CVPR 2019,
Eq. 2 with alpha = 0, beta = -1: the reward ``ACC * (LAT / T)^beta`` as a loss on its log);
``absolute`` ``W * |r - 1|``, TuNAS's absolute reward (Bender et al., CVPR 2020, Eq. 3), which
also pushes a cheap architecture up to the budget. FBNet's loss ``CE * alpha * log(LAT)^beta``
is the multiplicative relative of ``log``.

The derived genotype's cost is counted on the genotype itself (:meth:`CostModel.of_genotype`):
its kept edges only, each with its chosen operation. Every searched genotype, with or without
``--cost``, also records its parameters, FLOPs, BOPs and OPs at the retraining size
(:func:`genotype_counts`, one profiled forward pass per genotype when it is saved).
"""
from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..binarize import Binarizer
from ..data.registry import dataset_info
from ..errors import BnasError
from ..genotype import Cell, Genotype
from ..model import build_model
from ..model.configs import DEFAULT_SIZE
from ..ops import OPS, make_op
from ..profiling import Profile, si, profile
from ..registry import Registry
from . import topology

ZEROISE = "zeroise"
Shape = tuple[int, int, int]


# -- what a cost is ------------------------------------------------------------------------------
class CostKind(ABC):
    """A way of pricing operations: ``op`` prices one edge operation at its input shape, and
    ``network`` a whole network (both in :attr:`unit`); ``check`` raises if this kind cannot
    price anything here (latency without the packed engine)."""

    name: str = ""
    unit: str = ""
    #: Whether budgets of this kind are times (``5ms``) rather than counts (``100M``).
    time: bool = False
    description: str = ""

    def check(self) -> None:
        """Raise :class:`BnasError` if this kind cannot be used on this machine."""

    @abstractmethod
    def op(self, name: str, input_size: Shape, stride: int, binarizer: Binarizer) -> float:
        """The cost of edge operation ``name`` (under ``binarizer``, ``stride`` 2 on a reducing
        edge) on one sample of shape ``input_size``."""

    @abstractmethod
    def network(self, model: nn.Module, input_size: Shape, counted: Profile) -> float:
        """The cost of the whole network ``model`` on one sample of shape ``input_size``
        (``counted`` is its profile, already taken)."""

    def fixed(self, model: nn.Module, input_size: Shape, counted: Profile, edges: float) -> float:
        """``C_fixed``: what ``model`` costs without its edge operations, which cost ``edges``."""
        return self.network(model, input_size, counted) - edges

    def format(self, value: float) -> str:
        """``value`` with its unit, e.g. ``98.81 M OPs``, ``4.2 ms`` or ``0.085 ms``."""
        if self.time:
            ms = value * 1e3
            return f"{ms:,.3f} ms" if abs(ms) < 1 else f"{ms:,.1f} ms"
        return f"{si(value)} {self.unit}"


class CountKind(CostKind):
    """A count of :mod:`bnas.profiling` (``bnas show``'s figures)."""

    def __init__(self, name: str, unit: str, read: Callable[[Profile], float], description: str) -> None:
        self.name, self.unit, self.read, self.description = name, unit, read, description

    def op(self, name: str, input_size: Shape, stride: int, binarizer: Binarizer) -> float:
        return float(self.read(profile(make_op(name, input_size[0], stride, binarizer), input_size)))

    def network(self, model: nn.Module, input_size: Shape, counted: Profile) -> float:
        return float(self.read(counted))


COST_KINDS: Registry[CostKind] = Registry("cost kind")
COST_KINDS.add("ops", CountKind("ops", "OPs", lambda p: p.ops, "FLOPs + BOPs / 64 (Bi-Real Net)"))
COST_KINDS.add("bops", CountKind("bops", "BOPs", lambda p: p.bops, "binary multiply-accumulates"))
COST_KINDS.add("flops", CountKind("flops", "FLOPs", lambda p: p.flops,
                                  "real-valued multiply-accumulates"))


# -- budgets -------------------------------------------------------------------------------------
COUNT_SUFFIXES = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
TIME_SUFFIXES = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}
_TARGET = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµ]*)\s*$")


@dataclass(frozen=True)
class Target:
    """A budget: ``value`` in the kind's unit (seconds for times)."""

    value: float
    time: bool
    text: str

    def check_kind(self, kind: CostKind) -> None:
        """Raise unless a budget of this form fits ``kind`` (times for latency only)."""
        if self.time and not kind.time:
            raise BnasError(f"--cost-target {self.text!r} is a time; it needs --cost latency")
        if kind.time and not self.time:
            raise BnasError(f"--cost-target {self.text!r}: give a latency budget a time unit "
                            f"(e.g. 5ms)")


def parse_target(text: str) -> Target:
    """``100M``, ``1.2G``, ``250K``, ``3e8`` (counts) or ``5ms``, ``5 ms``, ``800us``, ``0.01s``
    (times, in seconds); BnasError for anything else or a budget that is not positive."""
    match = _TARGET.match(str(text))
    suffix = match.group(2) if match else None
    if match is None or (suffix.upper() not in COUNT_SUFFIXES and suffix not in TIME_SUFFIXES):
        raise BnasError(f"cannot read --cost-target {text!r}: give a count such as 100M, 1.2G, "
                        f"3e8 or a time such as 5ms, 800us")
    time = suffix in TIME_SUFFIXES
    scale = TIME_SUFFIXES[suffix] if time else COUNT_SUFFIXES[suffix.upper()]
    value = float(match.group(1)) * scale
    if not value > 0:
        raise BnasError(f"--cost-target must be positive, got {text!r}")
    return Target(value, time, str(text).strip())


def parse_weights(text: str) -> list[float]:
    """``--cost-weight``: one weight (``0.1``) or a comma-separated sweep (``0,0.01,0.1,1``);
    each a finite number >= 0."""
    weights = []
    for part in str(text).split(","):
        try:
            weight = float(part)
        except ValueError:
            raise BnasError(f"--cost-weight {text!r}: {part.strip()!r} is not a number") from None
        if not (math.isfinite(weight) and weight >= 0):
            raise BnasError(f"--cost-weight must be a number >= 0, got {part.strip()}")
        weights.append(weight)
    return weights


# -- penalties toward a budget -------------------------------------------------------------------
#: ``r = C(alpha) / T`` -> the penalty (see the module docstring for the literature).
PENALTIES: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("cost penalty")
PENALTIES.add("hinge", lambda r: F.relu(r - 1.0))
PENALTIES.add("log", lambda r: F.relu(torch.log(r)))
PENALTIES.add("absolute", lambda r: (r - 1.0).abs())


# -- the network at its retraining size ----------------------------------------------------------
@dataclass(frozen=True)
class RetrainSize:
    """The network whose cost is counted: cells, initial channels, input resolution, dataset."""

    dataset: str
    layers: int
    init_channels: int
    image_size: int
    num_classes: int | None = None

    @classmethod
    def of(cls, dataset: str, layers: int | None = None, init_channels: int | None = None,
           image_size: int | None = None, num_classes: int | None = None) -> RetrainSize:
        """Defaults: the builder's cell-network size for the dataset's family (20 cells, C=36
        for CIFAR-style data; 12, C=64 for ImageNet) at the dataset's image size."""
        info = dataset_info(dataset)
        default_layers, default_c = DEFAULT_SIZE[info.family]
        return cls(dataset, layers or default_layers, init_channels or default_c,
                   image_size or info.image_size, num_classes)

    @property
    def input_size(self) -> Shape:
        return (3, self.image_size, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "layers": self.layers,
                "init_channels": self.init_channels, "image_size": self.image_size}


def genotype_counts(genotype: Genotype | str, size: RetrainSize,
                    binarizer: Binarizer | str, **hparams: Any) -> dict[str, float]:
    """Parameters, FLOPs, BOPs and OPs of the network built from ``genotype`` at ``size``
    (:mod:`bnas.profiling`, what ``bnas show`` prints)."""
    model = build_model(genotype, dataset=size.dataset, num_classes=size.num_classes,
                        layers=size.layers, init_channels=size.init_channels,
                        binarizer=binarizer, **hparams)
    counted = profile(model, size.input_size)
    return {"params": counted.params, "flops": counted.flops, "bops": counted.bops,
            "ops": counted.ops}


def _probe_genotype(op_names: Sequence[str], steps: int, space: str) -> Genotype:
    """A genotype of the space whose edges, together, read every state a node can read (node
    ``n`` reads states ``n - 2`` and ``n - 1``; node 2 reads 0 and 1), so that one forward pass
    sees the input shape of every edge. Its operation is the space's first binary one, so that
    every edge runs (the evaluated cell computes identical poolings once)."""
    op = next((n for n in op_names if OPS.get(n).binary),
              next(n for n in op_names if OPS.canonical(n) != ZEROISE))
    nodes = tuple(((op, max(node - 2, 0)), (op, node - 1)) for node in range(2, steps + 2))
    cell = Cell(nodes, tuple(range(2, steps + 2)))
    return Genotype(name="cost-probe", kind="cell", normal=cell, reduce=cell, space=space)


def _edge_inputs(model: nn.Module, input_size: Shape) -> tuple[list[dict[int, Shape]], Profile]:
    """Per cell of ``model``, the per-sample shape of every state its edges read; and the
    model's profile (from the same forward pass)."""
    found: list[dict[int, Shape]] = [{} for _ in model.cells]
    hooks = []
    for index, cell in enumerate(model.cells):
        inputs = [j for node in cell.nodes for j in node]
        for op, j in zip(cell.ops, inputs):
            def record(module, args, index=index, j=j):
                found[index][j] = tuple(args[0].shape[1:])
            hooks.append(op.register_forward_pre_hook(record))
    try:
        counted = profile(model, input_size)  # eval-mode forward pass on one zero sample
    finally:
        for hook in hooks:
            hook.remove()
    return found, counted


@dataclass
class CostModel:
    """The per-edge, per-operation costs of a search space at a retraining size.

    ``cells`` holds, per cell of the retrained network in order, its type and its
    ``(n_edges, n_ops)`` cost table (rows in :func:`bnas.search.topology.edges` order); ``fixed``
    is everything else (see the module docstring).
    """

    kind: CostKind
    op_names: tuple[str, ...]
    steps: int
    size: RetrainSize
    fixed: float
    cells: list[tuple[str, torch.Tensor]]
    _tables: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, kind: str | CostKind, op_names: Sequence[str], steps: int, space: str,
              size: RetrainSize, binarizer: Binarizer) -> CostModel:
        """Price every operation of ``op_names`` on every edge of the network of ``size``."""
        kind = COST_KINDS.get(kind) if isinstance(kind, str) else kind
        kind.check()
        op_names = tuple(OPS.canonical(n) for n in op_names)
        model = build_model(_probe_genotype(op_names, steps, space), dataset=size.dataset,
                            num_classes=size.num_classes, layers=size.layers,
                            init_channels=size.init_channels, binarizer=binarizer)
        shapes, counted = _edge_inputs(model, size.input_size)
        priced: dict[tuple, float] = {}

        def price(op: str, shape: Shape, stride: int) -> float:
            key = (op, shape, stride)
            if key not in priced:
                priced[key] = 0.0 if op == ZEROISE else kind.op(op, shape, stride, binarizer)
            return priced[key]

        cells = []
        for cell, inputs in zip(model.cells, shapes):
            table = torch.tensor([[price(op, inputs[j], 2 if cell.reduction and j < 2 else 1)
                                   for op in op_names] for _, j in topology.edges(steps)],
                                 dtype=torch.float64)
            cells.append(("reduce" if cell.reduction else "normal", table))
        edges = cls(kind, op_names, steps, size, 0.0, cells).of_genotype(model.genotype)
        fixed = kind.fixed(model, size.input_size, counted, edges)
        return cls(kind, op_names, steps, size, fixed, cells)

    # -- costs ----------------------------------------------------------------------------------
    def tables(self) -> dict[str, torch.Tensor]:
        """Per cell type, the sum of its cells' tables: ``C(alpha) - C_fixed`` is
        ``sum_t sum(softmax(alpha_t) * tables[t])``."""
        if not self._tables:
            for cell_type in ("normal", "reduce"):
                tables = [t for kind, t in self.cells if kind == cell_type]
                self._tables[cell_type] = (torch.stack(tables).sum(0) if tables else
                                           torch.zeros(topology.n_edges(self.steps),
                                                       len(self.op_names), dtype=torch.float64))
        return self._tables

    def expected(self, alphas: Sequence[torch.Tensor]) -> torch.Tensor:
        """``C(alpha)`` for ``(alphas_normal, alphas_reduce)``, differentiable in them."""
        total = torch.zeros((), dtype=alphas[0].dtype, device=alphas[0].device) + self.fixed
        for alpha, cell_type in zip(alphas, ("normal", "reduce")):
            table = self.tables()[cell_type].to(dtype=alpha.dtype, device=alpha.device)
            total = total + (F.softmax(alpha, dim=-1) * table).sum()
        return total

    @property
    def maximum(self) -> float:
        """``C_max``: the most expensive one-hot architecture (every edge of a cell type its
        dearest operation, summed over the cells of that type, which share their alphas)."""
        return self.fixed + sum(float(t.max(dim=-1).values.sum()) for t in self.tables().values())

    def of_genotype(self, genotype: Genotype) -> float:
        """The cost of the network built from ``genotype`` at this size: its edges, each with
        its chosen operation, plus ``C_fixed``."""
        rows = {edge: row for row, edge in enumerate(topology.edges(self.steps))}
        cells = genotype.cells()
        total = self.fixed
        for cell_type, table in self.cells:
            for node, op, j in cells[cell_type].edges:
                name = OPS.canonical(op)
                if name not in self.op_names:
                    raise BnasError(f"genotype '{genotype.name}' uses {name}, which the cost "
                                    f"model of this space does not price")
                total += float(table[rows[(node, j)], self.op_names.index(name)])
        return total


# -- the term of the architecture objective ------------------------------------------------------
@dataclass
class CostObjective:
    """``W * C(alpha) / C_max``, or ``W * penalty(C(alpha) / T)`` with a budget ``T`` (see the
    module docstring); called on ``(alphas_normal, alphas_reduce)``."""

    model: CostModel
    weight: float
    target: Target | None = None
    penalty: str | None = "hinge"

    def __post_init__(self) -> None:
        self.penalty = PENALTIES.canonical(self.penalty or "hinge")
        if self.target is not None:
            self.target.check_kind(self.model.kind)
        if self.weight > 0 and self.model.maximum == self.model.fixed:
            raise BnasError(f"no operation of this space costs any {self.model.kind.unit}: a "
                            f"{self.model.kind.name} term cannot tell architectures apart")

    @classmethod
    def for_search(cls, cfg: Any, op_names: Sequence[str], num_classes: int,
                   binarizer: Binarizer) -> CostObjective:
        """The term a :class:`bnas.search.config.SearchConfig` with ``cost`` set asks for."""
        size = RetrainSize.of(cfg.dataset, cfg.cost_layers, cfg.cost_init_channels,
                              cfg.cost_image_size, num_classes)
        model = CostModel.build(cfg.cost, op_names, cfg.steps, cfg.space, size, binarizer)
        target = parse_target(cfg.cost_target) if cfg.cost_target is not None else None
        return cls(model, cfg.cost_weight, target, cfg.cost_penalty)

    def __call__(self, alphas: Sequence[torch.Tensor]) -> torch.Tensor:
        cost = self.model.expected(alphas)
        if self.target is None:
            return self.weight * cost / self.model.maximum
        return self.weight * PENALTIES.get(self.penalty)(cost / self.target.value)

    def meets(self, cost: float) -> bool | None:
        """Whether ``cost`` is within the budget (None without one)."""
        return None if self.target is None else cost <= self.target.value

    def describe(self) -> str:
        """One line for the run log."""
        kind = self.model.kind
        size = self.model.size
        how = (f"weight {self.weight:g} x {self.penalty}(C / {kind.format(self.target.value)})"
               if self.target is not None else
               f"weight {self.weight:g} x C / C_max (C_max {kind.format(self.model.maximum)})")
        return (f"cost {kind.name}: {how}; counted at {size.layers} cells, C={size.init_channels}, "
                f"{size.image_size}x{size.image_size} (fixed part {kind.format(self.model.fixed)})")

    def report(self, genotype: Genotype) -> dict[str, Any]:
        """The cost setting and ``genotype``'s cost, for its provenance."""
        cost = self.model.of_genotype(genotype)
        found = {"kind": self.model.kind.name, "unit": self.model.kind.unit, "weight": self.weight,
                 "size": self.model.size.to_dict(), "fixed": self.model.fixed,
                 "max_cost": self.model.maximum, "genotype_cost": cost}
        if self.target is not None:
            found.update({"target": self.target.text, "target_value": self.target.value,
                          "penalty": self.penalty, "meets_target": self.meets(cost)})
        return found
