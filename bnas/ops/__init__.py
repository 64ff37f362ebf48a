"""Operations an edge can carry and the named search spaces."""
from .layers import BinConvOp, BinFactorizedReduce, Identity, RealConvOp, Zero
from .registry import OPS, SPACES, FastKind, OpInfo, make_op

__all__ = ["OPS", "SPACES", "FastKind", "OpInfo", "make_op", "BinConvOp", "BinFactorizedReduce",
           "Identity", "RealConvOp", "Zero"]
