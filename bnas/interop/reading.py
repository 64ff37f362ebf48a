"""Reading another project's checkpoint: tensors only, in the layouts those projects save.

The seeds save ``torch.save(model.state_dict())`` (a bare state dict) or a dictionary holding it
under ``state_dict`` next to the epoch, the best accuracy and the optimizer (RBNN, ReCU, SiMaN,
BNAS's ImageNet code); models wrapped in ``DataParallel`` / ``DistributedDataParallel`` prefix
every name with ``module.``. Files are opened with ``torch.load(weights_only=True)``, which
refuses pickled code: nothing in a checkpoint runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import BnasError
from ..runio import load_tensors

#: Keys under which a checkpoint dictionary holds the model's state dict, in order of preference.
STATE_KEYS = ("state_dict", "model_state_dict", "model")
#: The prefix DataParallel and DistributedDataParallel give every name.
WRAPPER_PREFIX = "module."


def _scalar(value: Any) -> str | int | float | None:
    """A checkpoint entry worth reporting (epoch, accuracy, model name): a number, a string or
    a one-element tensor; None for anything else (optimizer state, parameter lists)."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else None
    return value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


def _is_state_dict(value: Any) -> bool:
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()))


def load_file(path: str | Path) -> Any:
    """The unpickled content of ``path`` (tensors and plain containers only)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BnasError(f"checkpoint not found: {path}")
    return load_tensors(path, "not a checkpoint of plain tensors")


def find_state_dict(data: Any, path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state dict, the other entries)`` of a loaded checkpoint, with any ``module.`` prefix
    removed."""
    state, meta = None, {}
    if _is_state_dict(data):
        state = data
    elif isinstance(data, dict):
        key = next((k for k in STATE_KEYS if _is_state_dict(data.get(k))), None)
        if key is not None:
            state = data[key]
            meta = {k: _scalar(v) for k, v in data.items()
                    if k != key and _scalar(v) is not None}
    if state is None:
        raise BnasError(f"{path} holds no model weights (expected a state dict of tensors or a "
                        f"dictionary with one under {' / '.join(repr(k) for k in STATE_KEYS)})")
    if all(k.startswith(WRAPPER_PREFIX) for k in state):
        state = {k[len(WRAPPER_PREFIX):]: v for k, v in state.items()}
    return dict(state), meta


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model state dict of a checkpoint file and its scalar metadata (epoch, accuracy,
    the architecture name some projects store)."""
    return find_state_dict(load_file(path), path)
