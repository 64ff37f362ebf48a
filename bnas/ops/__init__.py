"""Operations an edge can carry and the named search spaces.

The registry (:mod:`bnas.ops.registry`) loads without torch; the layers load on first use."""
from ..registry import lazy_attributes
from .registry import OPS, SPACES, FastKind, OpInfo, make_op

_LAYERS = ("BinConvOp", "BinFactorizedReduce", "Identity", "RealConvOp", "Zero")
__getattr__ = lazy_attributes(__name__, {name: ".layers" for name in _LAYERS})
__all__ = ["OPS", "SPACES", "FastKind", "OpInfo", "make_op", *_LAYERS]
