"""Checkpoints: written atomically, loaded safely, and checked against the model they go into.

Two kinds of file, both ``torch.save`` dictionaries with ``format`` and ``kind``:

- ``checkpoint.pt`` (``kind: checkpoint``), rewritten after every epoch: the model, every
  optimizer's state, the gradient scaler, the schedule position, the binarizer's configuration,
  each process's random-number generator states, the epoch count and the best accuracy;
- ``best.pt`` (``kind: weights``): the weights of the best validation epoch.

Both carry the model's *identity* (genotype, size, classes, binarizer), so a file given to the
wrong architecture is refused with a message that says which one it belongs to, before any
tensor is loaded. Files are written to a temporary name and renamed: a run killed while saving
leaves the previous file intact. Loading uses ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..binarize import schedules as hyper_schedules
from ..errors import BnasError
from ..runio import atomic_write

FORMAT = 1
KINDS = ("checkpoint", "weights")
#: Classes a saved optimizer state may hold (Bop's hyper-parameter schedules).
SAFE_GLOBALS = [hyper_schedules.Constant, hyper_schedules.StepDecay, hyper_schedules.Linear]


def atomic_save(payload: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file next to ``path``, flushed, then renamed over it."""
    atomic_write(path, lambda f: torch.save(payload, f))


def load(path: str | Path) -> dict[str, Any]:
    """A bnas checkpoint or weights file, on the CPU."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BnasError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file, another program's pickle, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BnasError(f"{path} is not a readable bnas checkpoint ({first})") from None
    if not isinstance(data, dict) or data.get("kind") not in KINDS or "model" not in data:
        raise BnasError(f"{path} is not a bnas checkpoint (no model weights and identity)")
    if data.get("format") != FORMAT:
        raise BnasError(f"{path} has checkpoint format {data.get('format')!r}; this bnas reads "
                        f"format {FORMAT}")
    return data


# -- model identity ----------------------------------------------------------------------------
def identity(model: nn.Module, *, layers: int | None, init_channels: int | None,
             config: str | None) -> dict[str, Any]:
    """What a file's weights belong to (the built model's genotype, size and binarizer)."""
    return {"arch": model.genotype.name, "config": config, "layers": layers,
            "init_channels": init_channels, "num_classes": model_classes(model),
            "dataset": model.dataset, "binarizer": model.binarizer.name,
            "layer_overrides": dict(getattr(model, "layer_overrides", {})),
            "structure": structure(model.genotype)}


def structure(genotype: Any) -> dict[str, Any]:
    """The parts of a genotype that define the network (not its name or provenance)."""
    return {k: v for k, v in genotype.to_json().items() if k in ("kind", "normal", "reduce", "network")}


def model_classes(model: nn.Module) -> int | None:
    """The number of outputs of the model's last linear layer."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def describe(ident: dict[str, Any]) -> str:
    """``'latest_cell' (config bnas-d, 12 layers, C=64, 1000 classes, binarizer plain)``."""
    parts = [f"config {ident['config']}" if ident.get("config") else None,
             f"{ident['layers']} layers" if ident.get("layers") else None,
             f"C={ident['init_channels']}" if ident.get("init_channels") else None,
             f"{ident['num_classes']} classes" if ident.get("num_classes") else None,
             f"binarizer {ident['binarizer']}"]
    return f"'{ident.get('arch')}' ({', '.join(p for p in parts if p)})"


def check_compatible(path: str | Path, saved: dict[str, Any], model: nn.Module,
                     current: dict[str, Any]) -> None:
    """Refuse ``saved`` (a loaded file) unless it fits ``model`` exactly; say what it is for."""
    ident = saved.get("identity") or {}
    reasons = []
    if ident.get("structure") != current["structure"]:
        reasons.append("a different genotype")
    if ident.get("binarizer") != current["binarizer"]:
        reasons.append(f"binarizer {ident.get('binarizer')}, not {current['binarizer']}")
    theirs_overrides = ident.get("layer_overrides") or {}
    if theirs_overrides != current.get("layer_overrides", {}):
        reasons.append(f"layer overrides {theirs_overrides or 'none'}, not "
                       f"{current.get('layer_overrides') or 'none'} (--layer-override)")
    mine = model.state_dict()
    theirs = saved["model"]
    missing = sorted(set(mine) - set(theirs))
    extra = sorted(set(theirs) - set(mine))
    shapes = [k for k in mine if k in theirs and tuple(mine[k].shape) != tuple(theirs[k].shape)]
    if missing or extra:
        reasons.append(f"{len(missing)} missing and {len(extra)} unexpected tensors "
                       f"(e.g. {(missing or extra)[0]})")
    if shapes:
        k = shapes[0]
        reasons.append(f"{len(shapes)} tensors of other shapes (e.g. {k}: "
                       f"{tuple(theirs[k].shape)} vs {tuple(mine[k].shape)})")
    if reasons:
        raise BnasError(f"{path} holds weights of {describe(ident)}, not of {describe(current)}: "
                        f"{'; '.join(reasons)}")


def load_model_state(path: str | Path, saved: dict[str, Any], model: nn.Module,
                     current: dict[str, Any]) -> None:
    """Check, then load every tensor of ``saved`` into ``model`` (never half of them)."""
    check_compatible(path, saved, model, current)
    model.load_state_dict(saved["model"], strict=True)


# -- random-number generators ------------------------------------------------------------------
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
