"""The builder: cell-stacked networks, fixed 1w1a networks, named configurations."""
from .build import build_model
from .configs import CONFIGS, ModelConfig
from .network import CellNetwork

__all__ = ["CONFIGS", "CellNetwork", "ModelConfig", "build_model"]
