"""Random-number generators of a run: seeding, per-epoch streams, and saved states.

A run is reproducible from its seed: the data order and augmentation draw from generators
reseeded by :func:`epoch_seed` at every epoch, and a checkpoint keeps each process's generator
states (:func:`rng_state`) so that a resumed run continues the same random streams.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of a generator reseeded at each epoch: a function of the run's seed, the epoch
    and the process only, so that a resumed run draws what an uninterrupted one would."""
    return (seed * 1_000_003 + epoch) * 1_009 + rank


def rng_state() -> dict[str, Any]:
    """This process's generator states: torch (CPU and CUDA), NumPy and Python."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32),
                         np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
    random.setstate(_as_tuples(state["python"]))


def _as_tuples(value: Any) -> Any:
    """Python's generator state with its nested lists back as tuples."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value
