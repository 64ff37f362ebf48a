"""Every operation an edge can carry, by name, and the named search spaces (ordered op lists).

An op factory is called as ``factory(C, stride, binarizer, affine)`` and returns a module that
maps ``C`` channels to ``C`` channels, halving the resolution when ``stride == 2``. The
factories live in :mod:`bnas.ops.layers` and are imported on first use, so this registry (and
genotype validation, which reads it) loads without torch.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from ..registry import Lazy, Registry

if TYPE_CHECKING:
    from torch import nn

    from ..binarize.base import Binarizer

OpFactory = Callable[[int, int, "Binarizer", bool], "nn.Module"]


class FastKind(Enum):
    """How the fast search path (:mod:`bnas.search.fanout`) computes an operation on all the
    edges that leave a node at once."""

    ZERO = "zero"  #: outputs zeros: not computed (a Zero module)
    POOL = "pool"  #: a pooling: once per node, weighted per edge
    IDENTITY = "identity"  #: the node itself, weighted per edge (an Identity module)
    CONV = "conv"  #: a BinConvOp: stacked with the node's other binary convolutions
    REDUCE = "reduce"  #: a BinFactorizedReduce: its convolutions stacked over the edges


@dataclass(frozen=True)
class OpInfo:
    """An operation: its factory, a one-line description, and how the fast search path
    computes it at stride 1 and at stride 2 (``fast``; None: edge by edge, each edge its own
    module, as the reference path does)."""

    factory: OpFactory
    description: str
    binary: bool = False
    fast: tuple[FastKind | None, FastKind | None] = (None, None)


OPS: Registry[OpInfo] = Registry("operation")


def _layers(function: str, **bound: int) -> Lazy:
    return Lazy(f"bnas.ops.layers:{function}", **bound)


# The same fast-path treatment at both strides.
_ZERO = (FastKind.ZERO, FastKind.ZERO)
_POOL = (FastKind.POOL, FastKind.POOL)
_CONV = (FastKind.CONV, FastKind.CONV)
OPS.add("zeroise", OpInfo(_layers("zeroise"), "zeros (a real layer in BNAS: it prunes the edge)",
                          fast=_ZERO), aliases=("none",))
OPS.add("max_pool_3x3", OpInfo(_layers("max_pool_3x3"), "3x3 max pooling", fast=_POOL))
OPS.add("avg_pool_3x3", OpInfo(_layers("avg_pool_3x3"), "3x3 average pooling (padding not "
                                                        "counted)", fast=_POOL))
OPS.add("bin_dil_conv_3x3", OpInfo(_layers("bin_conv", kernel=3, dilation=2),
                                   "binary 3x3 conv, dilation 2", binary=True, fast=_CONV))
OPS.add("bin_dil_conv_5x5", OpInfo(_layers("bin_conv", kernel=5, dilation=2),
                                   "binary 5x5 conv, dilation 2", binary=True, fast=_CONV))
OPS.add("bin_conv_3x3", OpInfo(_layers("bin_conv", kernel=3, dilation=1), "binary 3x3 conv",
                               binary=True, fast=_CONV))
OPS.add("bin_conv_5x5", OpInfo(_layers("bin_conv", kernel=5, dilation=1), "binary 5x5 conv",
                               binary=True, fast=_CONV))
OPS.add("skip", OpInfo(_layers("skip"), "identity; binary factorized reduce when strided",
                       binary=True, fast=(FastKind.IDENTITY, FastKind.REDUCE)),
        aliases=("skip_connect",))

SPACES: Registry[tuple[str, ...]] = Registry("search space")
SPACES.add("bnas", ("zeroise", "max_pool_3x3", "avg_pool_3x3", "bin_dil_conv_3x3",
                    "bin_dil_conv_5x5", "bin_conv_3x3", "bin_conv_5x5"))
SPACES.add("bnas-skip", SPACES.get("bnas") + ("skip",))


def make_op(name: str, c: int, stride: int, binarizer: Binarizer, affine: bool = True) -> nn.Module:
    """Instantiate operation ``name`` (or an alias) for ``c`` channels."""
    return OPS.get(name).factory(c, stride, binarizer, affine)
