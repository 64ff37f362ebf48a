"""The builder: cell-stacked networks, fixed 1w1a networks, named configurations."""
from . import bopnets  # noqa: F401  (the Bop papers' networks register their families)
from .build import build_model
from .configs import CONFIGS, ModelConfig
from .network import CellNetwork

__all__ = ["CONFIGS", "CellNetwork", "ModelConfig", "build_model"]
