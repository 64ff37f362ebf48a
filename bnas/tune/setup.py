"""What defines a study, stored with it so that any worker can resume or join it.

A :class:`TuneSetup` holds everything trials must share (mode, base preset and options, proxy
budget, search space, pruner, sampler). It is saved as a user attribute of the optuna study; a
process that opens an existing study takes the stored setup, and options it was given that
contradict it are an error.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import BnasError

STUDY_ATTR = "bnas_setup"
#: What a trial is judged by, and which way: the retraining's best validation top-1 and, in a
#: search for cost, the found genotype's cost (bnas.search.cost).
DIRECTIONS = {"top1": "maximize", "cost": "minimize"}


@dataclass(frozen=True)
class TuneSetup:
    """``overrides`` are training settings given on the command line (architecture, binarizer,
    sizes, seed, ...); ``budget`` the proxy-budget fields (epochs, train/val subsets);
    ``search`` the fixed search settings of search mode; ``space`` the search space in its YAML
    form (:meth:`bnas.tune.space.SearchSpace.to_dict`)."""

    mode: str
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] = field(default_factory=dict)
    pruner: str = "median"
    pruner_startup: int = 3
    sampler: str = "tpe"

    @property
    def objectives(self) -> tuple[str, ...]:
        """``("top1",)``; ``("top1", "cost")`` in search mode with a cost (``--search-arg
        cost=KIND``): a multi-objective study whose trials are judged by both (optuna's
        multi-objective optimisation: no single best trial, a Pareto front)."""
        return ("top1", "cost") if self.mode == "search" and self.search.get("cost") else ("top1",)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TuneSetup:
        return cls(**json.loads(text))


def check_given(stored: TuneSetup, given: dict[str, Any], study: str) -> None:
    """Raise unless every explicitly given option agrees with the stored setup of ``study``.

    ``given`` maps setup field names (``overrides.X``, ``budget.X``, ``search.X`` for entries) to the
    values this process was asked for.
    """
    theirs = _flatten(dataclasses.asdict(stored))
    for key, value in sorted(given.items()):
        value = json.loads(json.dumps(value))
        if value != theirs.get(key):
            raise BnasError(f"study '{study}' was created with {key.split('.')[-1]}="
                            f"{_show(theirs.get(key))}, not {_show(value)}; leave the option out "
                            f"to join it, or pick another --study")


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("overrides", "budget", "search"):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = json.loads(json.dumps(value))  # tuples and lists compare alike
    return flat


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)
