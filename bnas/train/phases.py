"""A recipe's epoch-measured phases, scaled when ``--epochs`` shortens or lengthens it.

A recipe written for ``E`` epochs measures some of its phases in epochs: the linear warm-up
(``warmup_epochs``), the restart period of ``cosine_restarts`` (``period``), the milestones of
``step`` (``milestones``) and the ``every`` of a scheme's step-decayed hyper-parameter (Bop's
``gamma``). When the command line sets ``--epochs E'``, each of those the command line does not
set itself is multiplied by ``E' / E`` (rounded, at least 1), so that a shortened run keeps the
recipe's proportions instead of, say, spending five epochs of a five-epoch run warming up.
:func:`scale_phases` returns the scaled settings as one more configuration layer, and a line per
setting for the run log.
"""
from __future__ import annotations

from typing import Any

#: ``schedule_args`` keys measured in epochs, by learning-rate schedule.
SCHEDULE_EPOCH_ARGS = {"cosine_restarts": ("period",), "step": ("milestones",)}


def _scale(value: Any, factor: float) -> Any:
    if isinstance(value, (list, tuple)):
        return [_scale(v, factor) for v in value]
    return max(1, round(value * factor))


def scale_phases(recipe: dict[str, Any], given: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``(layer, notes)``: the epoch-measured settings of ``recipe`` (the merged settings below
    the command line) rescaled to ``given["epochs"]``, except those ``given`` sets."""
    epochs, planned = given.get("epochs"), recipe.get("epochs")
    if not epochs or not planned or epochs == planned:
        return {}, []
    factor = epochs / planned
    layer: dict[str, Any] = {}
    notes: list[str] = []

    def note(name: str, old: Any, new: Any) -> None:
        notes.append(f"{name} {old} -> {new} (the recipe's {planned} epochs scaled to {epochs})")

    if "warmup_epochs" not in given and recipe.get("warmup_epochs"):
        layer["warmup_epochs"] = _scale(recipe["warmup_epochs"], factor)
        note("warmup_epochs", recipe["warmup_epochs"], layer["warmup_epochs"])
    schedule = given.get("schedule", recipe.get("schedule"))
    args = dict(recipe.get("schedule_args") or {})
    for key in SCHEDULE_EPOCH_ARGS.get(schedule, ()):
        if key in args and key not in (given.get("schedule_args") or {}):
            scaled = _scale(args[key], factor)
            note(f"schedule_args.{key}", args[key], scaled)
            layer.setdefault("schedule_args", {})[key] = scaled
    hparams = given.get("binarizer_hparams") or {}
    for name, spec in (recipe.get("binarizer_hparams") or {}).items():
        if isinstance(spec, dict) and "every" in spec and name not in hparams:
            scaled = {**spec, "every": _scale(spec["every"], factor)}
            note(f"binarizer_hparams.{name}.every", spec["every"], scaled["every"])
            layer.setdefault("binarizer_hparams", {})[name] = scaled
    if "binarizer_hparams" in layer:
        layer["binarizer"] = recipe.get("binarizer")
    if "schedule_args" in layer:
        layer["schedule"] = schedule
    return layer, notes
