"""Training checkpoints: what they hold, and the check against the model they go into.

Two kinds of file, both ``torch.save`` dictionaries with ``format`` and ``kind``:

- ``checkpoint.pt`` (``kind: checkpoint``), rewritten after every epoch: the model, every
  optimizer's state, the gradient scaler, the schedule position, the binarizer's configuration,
  each process's random-number generator states, the epoch count and the best accuracy;
- ``best.pt`` (``kind: weights``): the weights of the best validation epoch.

Both carry the model's *identity* (genotype, size, classes, binarizer), so a file given to the
wrong architecture is refused with a message that says which one it belongs to, before any
tensor is loaded. Writing and reading (atomic, safe, with kind and format) is
:mod:`bnas.run.checkpoint`'s.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..binarize.base import BinaryLinear
from ..errors import BnasError
from ..run import checkpoint as run_checkpoint

KINDS = ("checkpoint", "weights")


def load(path: str | Path) -> dict[str, Any]:
    """A bnas training checkpoint or weights file (or a run directory's checkpoint), on the CPU."""
    data = run_checkpoint.load(path, KINDS)
    if "model" not in data:
        raise BnasError(f"{data['path']} is not a bnas checkpoint (no model weights and identity)")
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
    """The number of outputs of the model's last linear layer (real or binary)."""
    linears = [m for m in model.modules() if isinstance(m, (nn.Linear, BinaryLinear))]
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
