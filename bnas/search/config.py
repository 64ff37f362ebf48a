"""Search configuration: BNAS's settings as defaults, small presets per dataset, validation.

Settings resolve in three layers, later ones winning: the defaults of :class:`SearchConfig`
(BNAS's CIFAR-10 search, Kim et al., ECCV 2020: C=16, 8 layers, batch 64, 50 epochs, seed 2,
SGD 0.025 -> 0.001 cosine, Adam 3e-4 for the alphas, lambda 1, tau 7.7, gamma 3), the
dataset's preset (:data:`DATASET_PRESETS`: the offline ``digits`` set searches a small supernet
in about a minute on a CPU, Fashion-MNIST a subset at 16x16 in minutes), and explicit settings
(``None`` means "not given").
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import genotype as G
from ..binarize import BINARIZERS, get as get_binarizer
from ..data.info import dataset_info
from ..errors import BnasError
from ..ops import SPACES
from .cell import CELLS

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

#: Settings a dataset changes from the BNAS defaults.
DATASET_PRESETS: dict[str, dict[str, Any]] = {
    "digits": {"epochs": 6, "layers": 5, "init_channels": 8, "image_size": 8, "batch_size": 64},
    # Fashion-MNIST and MNIST on a CPU: 2,000 of the 60,000 images at 16x16, minutes per epoch.
    "fashion-mnist": {"epochs": 4, "layers": 5, "init_channels": 8, "image_size": 16,
                      "batch_size": 32, "subset": 2000},
    "mnist": {"epochs": 4, "layers": 5, "init_channels": 8, "image_size": 16, "batch_size": 32,
              "subset": 2000},
    "synthetic": {"epochs": 2, "layers": 5, "init_channels": 8, "batch_size": 32},
}


@dataclass
class SearchConfig:
    """Everything a search needs; stored in its checkpoints and its genotypes' provenance."""

    save: str | None = None
    strategy: str = "bnas"
    samples: int = 1
    cost_band: dict[str, str] = field(default_factory=dict)
    dataset: str = "cifar10"
    data: str | None = None
    image_size: int | None = None
    subset: int | None = None
    train_portion: float = 0.5
    space: str = "bnas"
    binarizer: str = "plain"
    binarizer_hparams: dict[str, Any] = field(default_factory=dict)
    layers: int = 8
    init_channels: int = 16
    steps: int = 4
    epochs: int = 50
    batch_size: int = 64
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    arch_lr: float = 3e-4
    arch_weight_decay: float = 1e-3
    lam: float = 1.0
    tau: float = 7.7
    gamma: float = 3.0
    order: int = 1
    cost: str | None = None
    cost_weight: float | None = None
    cost_target: str | None = None
    cost_penalty: str | None = None
    cost_layers: int | None = None
    cost_init_channels: int | None = None
    cost_image_size: int | None = None
    seed: int = 2
    workers: int = 2
    impl: str = "fast"
    device: str = "auto"
    progress: bool = True
    out: str | None = None
    genotype_dir: str | None = None
    overwrite: bool = False

    def validate(self) -> SearchConfig:
        """Normalise names and raise :class:`BnasError` (one line) for impossible settings."""
        if self.save is None:
            raise BnasError("give the genotype's name: --save NAME")
        if not NAME_PATTERN.match(self.save):
            raise BnasError(f"--save '{self.save}': use letters, digits, '_', '-' and '.'")
        dataset_info(self.dataset)
        self._validate_strategy()
        self.space = SPACES.canonical(self.space)
        self.binarizer = BINARIZERS.canonical(self.binarizer)
        get_binarizer(self.binarizer, **self.binarizer_hparams)
        CELLS.get(self.impl)
        for name in ("layers", "init_channels", "steps", "epochs", "batch_size"):
            _check(name, getattr(self, name), lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
        _check("layers", self.layers, lambda v: v >= 3, "at least 3 (two reduction cells)")
        _check("workers", self.workers, lambda v: isinstance(v, int) and v >= 0, "an integer >= 0")
        for name in ("image_size", "subset"):
            if getattr(self, name) is not None:
                _check(name, getattr(self, name), lambda v: isinstance(v, int) and v >= 2,
                       "an integer >= 2")
        if self.image_size is not None:  # the two reduction cells halve it exactly
            _check("image_size", self.image_size, lambda v: v % 4 == 0, "a multiple of 4")
        _check("train_portion", self.train_portion, lambda v: _finite(v) and 0 < v < 1,
               "a number strictly between 0 and 1")
        for name in ("lr", "arch_lr", "tau", "gamma"):
            _check(name, getattr(self, name), lambda v: _finite(v) and v > 0, "a number > 0")
        for name in ("lr_min", "momentum", "weight_decay", "arch_weight_decay", "lam"):
            _check(name, getattr(self, name), lambda v: _finite(v) and v >= 0, "a number >= 0")
        _check("order", self.order, lambda v: v in (1, 2), "1 (first order) or 2 (second order)")
        self._validate_cost()
        return self

    def _validate_cost(self) -> None:
        """The cost settings (:mod:`bnas.search.cost`): a kind, a weight >= 0, an optional
        budget in the kind's units and its penalty, the retraining size."""
        from .cost import COST_KINDS, PENALTIES, parse_target

        given = [name for name in COST_FIELDS if getattr(self, name) is not None]
        if self.cost is None:
            if given:
                raise BnasError(f"--{given[0].replace('_', '-')} needs --cost KIND "
                                f"({', '.join(COST_KINDS.names())})")
            return
        self.cost = COST_KINDS.canonical(self.cost)
        COST_KINDS.get(self.cost).check()  # latency: the packed engine must run here
        if self.cost_weight is None:
            raise BnasError("give --cost-weight W with --cost (0 records the cost without "
                            "optimising it)")
        _check("cost_weight", self.cost_weight, lambda v: _finite(v) and v >= 0, "a number >= 0")
        if self.cost_target is not None:
            parse_target(self.cost_target).check_kind(COST_KINDS.get(self.cost))
        if self.cost_penalty is not None:
            if self.cost_target is None:
                raise BnasError("--cost-penalty shapes the pull toward --cost-target; give one")
            self.cost_penalty = PENALTIES.canonical(self.cost_penalty)
        for name in ("cost_layers", "cost_init_channels", "cost_image_size"):
            if getattr(self, name) is not None:
                _check(name, getattr(self, name), lambda v: isinstance(v, int) and v >= 1,
                       "an integer >= 1")
        if self.cost_layers is not None:
            _check("cost_layers", self.cost_layers, lambda v: v >= 3,
                   "at least 3 (two reduction cells)")

    def _validate_strategy(self) -> None:
        from .sample import CostBand
        from .strategies import STRATEGIES

        self.strategy = STRATEGIES.canonical(self.strategy)
        _check("samples", self.samples, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
        CostBand.from_settings(self.cost_band)
        if self.strategy != "random" and (self.samples != 1 or self.cost_band):
            raise BnasError("--samples and --band-params/--band-ops apply to --strategy random")
        if self.strategy == "random" and self.cost is not None:
            raise BnasError("--cost steers --strategy bnas; random search keeps costs in a band "
                            "(--band-params, --band-ops)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def genotype_path(self, name: str) -> Path:
        """Where the genotype ``name`` of this search is written: ``genotype_dir`` if given,
        else the user genotype directory, where ``bnas train``/``draw``/``show`` find it by name."""
        folder = Path(self.genotype_dir).expanduser() if self.genotype_dir else G.user_dir()
        return folder / f"{name}.json"


FIELDS = {f.name: f for f in dataclasses.fields(SearchConfig)}
#: The cost settings other than ``cost`` itself (each needs it).
COST_FIELDS = ("cost_weight", "cost_target", "cost_penalty", "cost_layers", "cost_init_channels",
               "cost_image_size")


def resolve(overrides: dict[str, Any]) -> SearchConfig:
    """Defaults < the dataset's preset < ``overrides`` (entries that are None are not given)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown_keys = sorted(set(given) - set(FIELDS))
    if unknown_keys:
        raise BnasError(f"unknown search settings: {', '.join(unknown_keys)}")
    dataset = given.get("dataset", SearchConfig.dataset)
    settings = {**DATASET_PRESETS.get(dataset, {}), **given}
    return SearchConfig(**settings).validate()


def from_dict(data: dict[str, Any]) -> SearchConfig:
    """A configuration saved by :meth:`SearchConfig.to_dict` (unknown keys are an error)."""
    unknown_keys = sorted(set(data) - set(FIELDS))
    if unknown_keys:
        raise BnasError(f"saved search settings have unknown keys: {', '.join(unknown_keys)}")
    return SearchConfig(**data).validate()


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(name: str, value: Any, ok, expected: str) -> None:
    if isinstance(value, bool) or not ok(value):
        raise BnasError(f"--{name.replace('_', '-')} must be {expected}, got {value!r}")
