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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import genotype as G
from ..binarize import BINARIZERS, get as get_binarizer
from ..data.registry import DATASETS, dataset_info
from ..errors import BnasError
from ..ops import SPACES
from ..options import HPARAM_FLAG, check, check_all, fields, finite, setting
from .cell import CELLS
from .cost import COST_KINDS, PENALTIES, parse_target

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
    """Everything a search needs; stored in its checkpoints and its genotypes' provenance.

    Each field carries its ``--help`` text, its flag and whether ``bnas tune`` may sample it
    (:func:`bnas.options.setting`); ``bnas search``'s options are generated from them."""

    save: str | None = setting(None, "name of the genotypes to write (NAME, NAME_imagenet)",
                               tunable=False, metavar="NAME")
    strategy: str = setting("bnas", "search strategy (bnas.search.strategies)", tunable=False)
    samples: int = setting(1, "--strategy random: how many genotypes to draw (saved as NAME_0 .. "
                              "NAME_<N-1>)", tunable=False, metavar="N")
    cost_band: dict[str, str] = setting({}, "--strategy random: the cost bands genotypes must "
                                            "fall in, by measure (params, ops): LO:HI",
                                        tunable=False)
    dataset: str = setting("cifar10", "dataset: " + ", ".join(DATASETS.names()), tunable=False)
    data: str | None = setting(None, "dataset root (CIFAR download dir; train/ and val/ folders)",
                               tunable=False, metavar="DIR")
    image_size: int | None = setting(None, "input resolution (default: the dataset's)",
                                     tunable=False)
    subset: int | None = setting(None, "search on N training images only", tunable=False,
                                 metavar="N")
    train_portion: float = setting(0.5, "share of the training images that train the weights; "
                                        "the rest train the architecture")
    space: str = setting("bnas", "search space: " + ", ".join(SPACES.names()))
    binarizer: str = setting("plain", "binarization scheme: " + ", ".join(BINARIZERS.names())
                             + " (BNAS's is plain)", tunable=False)
    binarizer_hparams: dict[str, Any] = setting({}, "a hyper-parameter of the scheme, KEY=VALUE "
                                                    "(repeatable; values read as YAML)",
                                                flag=HPARAM_FLAG, tunable=False)
    layers: int = setting(8, "cells of the supernet", tunable=False)
    init_channels: int = setting(16, "initial channels C", tunable=False)
    steps: int = setting(4, "intermediate nodes per cell", tunable=False)
    epochs: int = setting(50, "search epochs", tunable=False)
    batch_size: int = setting(64, "global batch size, split evenly across processes")
    lr: float = setting(0.025, "weight learning rate, cosine-annealed")
    lr_min: float = setting(0.001, "final weight learning rate")
    momentum: float = setting(0.9, "weight SGD momentum")
    weight_decay: float = setting(3e-4, "weight decay of the weights")
    arch_lr: float = setting(3e-4, "Adam learning rate of the alphas")
    arch_weight_decay: float = setting(1e-3, "weight decay of the alphas")
    lam: float = setting(1.0, "weight of the diversity (entropy) term", flag="--lambda")
    tau: float = setting(7.7, "annealing constant of the diversity term, epochs")
    gamma: float = setting(3.0, "zeroise down-weighting of the ImageNet genotype")
    order: int = setting(1, "1: first-order DARTS (BNAS); 2: second-order (unrolled) DARTS",
                         choices=(1, 2))
    partial_channels: int = setting(1, "send 1/K of the channels through the mixed operations, "
                                       "with channel shuffle and edge normalisation (PC-DARTS); "
                                       "K divides --init-channels (1: off)", tunable=False,
                                    metavar="K")
    arch_warmup: int = setting(0, "train the weights only for the first E epochs, the "
                                  "architecture frozen (PC-DARTS, P-DARTS)", tunable=False,
                               metavar="E")
    max_param_free: int | None = setting(None, "at most M parameter-free edges (zeroise, pooling, "
                                               "skip) per derived cell (P-DARTS)", tunable=False,
                                         metavar="M")
    stop_param_free: int | None = setting(None, "stop once the derived normal cell has N "
                                                "parameter-free edges (DARTS+)", tunable=False,
                                          metavar="N")
    cost: str | None = setting(None, "search for cost as well: " + ", ".join(COST_KINDS.names())
                               + " (bnas.search.cost)", tunable=False, metavar="KIND")
    cost_weight: float | None = setting(
        None, "weight of the cost term, >= 0 (0 records the cost without optimising it); "
              "several (0,0.01,0.1,1): a sweep that retrains what each finds and writes the "
              "Pareto front", type=str, metavar="W[,W...]")
    cost_target: str | None = setting(None, "drive the cost toward a budget instead: 100M, 1.2G "
                                            "(counts), 5ms (latency)", metavar="BUDGET")
    cost_penalty: str | None = setting(None, "penalty above the budget: "
                                       + ", ".join(PENALTIES.names()) + " (default hinge)",
                                       metavar="NAME")
    cost_layers: int | None = setting(None, "cells of the retrained network whose cost counts "
                                            "(20 for CIFAR-family data, 12 ImageNet)",
                                      tunable=False)
    cost_init_channels: int | None = setting(None, "initial channels of the retrained network "
                                                   "(36 for CIFAR-family data, 64 ImageNet)",
                                             tunable=False)
    cost_image_size: int | None = setting(None, "input resolution of the retrained network "
                                                "(the dataset's)", tunable=False)
    seed: int = setting(2, "random seed", tunable=False)
    workers: int = setting(2, "data-loading worker processes per process", tunable=False)
    impl: str = setting("fast", "supernet implementation: " + ", ".join(CELLS.names())
                        + " (same maths)", tunable=False)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N", tunable=False)
    progress: bool = setting(True, "show a progress bar", tunable=False)
    out: str | None = setting(None, "run directory (default runs/search-NAME-<time>)",
                              tunable=False, metavar="DIR")
    genotype_dir: str | None = setting(None, "write the genotypes there instead of the user "
                                             "genotype directory", tunable=False, metavar="DIR")
    overwrite: bool = setting(False, "replace existing genotypes of that name", tunable=False)

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
        check_all(self, ("layers", "init_channels", "steps", "epochs", "batch_size"),
                  lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
        check("layers", self.layers, lambda v: v >= 3, "at least 3 (two reduction cells)")
        check("workers", self.workers, lambda v: isinstance(v, int) and v >= 0, "an integer >= 0")
        check_all(self, ("image_size", "subset"), lambda v: isinstance(v, int) and v >= 2,
                  "an integer >= 2", optional=True)
        if self.image_size is not None:  # the two reduction cells halve it exactly
            check("image_size", self.image_size, lambda v: v % 4 == 0, "a multiple of 4")
        check("train_portion", self.train_portion, lambda v: finite(v) and 0 < v < 1,
              "a number strictly between 0 and 1")
        check_all(self, ("lr", "arch_lr", "tau", "gamma"), lambda v: finite(v) and v > 0,
                  "a number > 0")
        check_all(self, ("lr_min", "momentum", "weight_decay", "arch_weight_decay", "lam"),
                  lambda v: finite(v) and v >= 0, "a number >= 0")
        check("order", self.order, lambda v: v in (1, 2), "1 (first order) or 2 (second order)")
        check("partial_channels", self.partial_channels,
              lambda v: isinstance(v, int) and v >= 1 and self.init_channels % v == 0,
              f"an integer >= 1 that divides --init-channels ({self.init_channels})")
        check("arch_warmup", self.arch_warmup, lambda v: isinstance(v, int) and 0 <= v < self.epochs,
              f"an integer from 0 to {self.epochs - 1} (below --epochs)")
        edges = 2 * self.steps
        check_all(self, ("max_param_free", "stop_param_free"),
                  lambda v: isinstance(v, int) and 0 <= v <= edges,
                  f"an integer from 0 to {edges} (the edges of a derived cell)", optional=True)
        self._validate_cost()
        return self

    def _validate_cost(self) -> None:
        """The cost settings (:mod:`bnas.search.cost`): a kind, a weight >= 0, an optional
        budget in the kind's units and its penalty, the retraining size."""
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
        check("cost_weight", self.cost_weight, lambda v: finite(v) and v >= 0, "a number >= 0")
        if self.cost_target is not None:
            parse_target(self.cost_target).check_kind(COST_KINDS.get(self.cost))
        if self.cost_penalty is not None:
            if self.cost_target is None:
                raise BnasError("--cost-penalty shapes the pull toward --cost-target; give one")
            self.cost_penalty = PENALTIES.canonical(self.cost_penalty)
        check_all(self, ("cost_layers", "cost_init_channels", "cost_image_size"),
                  lambda v: isinstance(v, int) and v >= 1, "an integer >= 1", optional=True)
        if self.cost_layers is not None:
            check("cost_layers", self.cost_layers, lambda v: v >= 3,
                  "at least 3 (two reduction cells)")

    def _validate_strategy(self) -> None:
        from .sample import CostBand
        from .strategies import STRATEGIES

        self.strategy = STRATEGIES.canonical(self.strategy)
        check("samples", self.samples, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
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


FIELDS = fields(SearchConfig)
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
