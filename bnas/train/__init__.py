"""Retraining: configuration presets, the engine (``train`` / ``evaluate``), checkpoints."""
from .config import TrainConfig, load_preset, preset_names, resolve_config
from .engine import NonFiniteLoss, Trainer, evaluate, train

__all__ = ["NonFiniteLoss", "TrainConfig", "Trainer", "evaluate", "load_preset", "preset_names",
           "resolve_config", "train"]
