"""Run checkpoints: one writer and one loader for every kind of file a run saves.

Every file is a ``torch.save`` dictionary that says what it is (``kind``: ``checkpoint`` and
``weights`` for training, ``search-checkpoint`` for a search), which layout it has
(``format``) and which bnas wrote it (``bnas_version``). It is written to a temporary name and
renamed (:func:`bnas.runio.atomic_write`): a run killed while saving leaves the previous file
intact. Loading uses ``torch.load(weights_only=True)`` with the few bnas classes a saved
optimizer state may hold, and refuses a file of another kind or format in one line.
"""
from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..binarize import schedules as hyper_schedules
from ..errors import BnasError
from ..runio import atomic_write, load_tensors

#: The layout of the files this bnas writes and reads.
FORMAT = 1
#: The name of the file a run rewrites after every epoch.
CHECKPOINT = "checkpoint.pt"
#: Classes a saved optimizer state may hold (Bop's hyper-parameter schedules).
SAFE_GLOBALS = [hyper_schedules.Constant, hyper_schedules.StepDecay, hyper_schedules.Linear]


def atomic_save(payload: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file next to ``path``, flushed, then renamed over it."""
    atomic_write(path, lambda f: torch.save(payload, f))


def save(kind: str, payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` as a file of ``kind`` (with the format and bnas version), atomically."""
    atomic_save({"kind": kind, "format": FORMAT, "bnas_version": __version__, **payload}, path)


def load(path: str | Path, kinds: Collection[str], what: str = "bnas checkpoint") -> dict[str, Any]:
    """The file at ``path`` (or ``path/checkpoint.pt`` for a run directory), on the CPU; a
    :class:`BnasError` naming ``what`` was expected unless its ``kind`` is one of ``kinds`` and
    its ``format`` is :data:`FORMAT`."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise BnasError(f"{what} not found: {path}")
    data = load_tensors(path, f"not a readable {what}", SAFE_GLOBALS)
    if not isinstance(data, dict) or data.get("kind") not in kinds:
        raise BnasError(f"{path} is not a {what}")
    if data.get("format") != FORMAT:
        raise BnasError(f"{path} has checkpoint format {data.get('format')!r}; this bnas reads "
                        f"format {FORMAT}")
    data["path"] = path
    return data
