"""Training configuration: one dataclass, recipe presets, and how they are merged.

A run's configuration is resolved from four layers, later ones winning:

1. the defaults of :class:`TrainConfig`;
2. the binarizer's own recipe for the dataset family (``Binarizer.recipe("cifar")`` or
   ``("imagenet")``: the preset of the scheme's paper, e.g. ``recu-cifar``);
3. a preset: a YAML (or JSON) file under ``bnas/recipes/`` given by name (``bnas-cifar``), any
   file path (e.g. the ``config.yaml`` of an earlier run or the ``best.yaml`` of ``bnas tune``),
   or, when none is given, the recipe of the named configuration (``--config bnas-a`` ->
   ``bnas-cifar``);
4. explicit overrides (command-line options); ``None`` means "not given".

``binarizer_hparams`` and ``schedule_args`` are merged key by key, but a layer that changes the
binarizer (or the schedule) drops those of earlier layers: one scheme's hyper-parameters mean
nothing to another. Unknown keys anywhere are an error that names them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .. import presets
from ..binarize import BINARIZERS
from ..data.registry import DATASETS, dataset_info
from ..data.recipes import DATA_RECIPES
from ..errors import BnasError, unknown
from ..model.configs import CONFIGS
from ..options import HPARAM_FLAG, check, check_all, fields, finite, setting
from ..run.schedules import SCHEDULES, build_schedule
from ..runio import atomic_write_text
from .data import LOADERS
from .phases import scale_phases

AMP_MODES = ("bf16", "fp16")
OPTIMIZERS = ("sgd", "adam")
#: Mapping fields that belong to another field (their owner); see :func:`_combine`.
DEPENDENT = {"binarizer_hparams": "binarizer", "schedule_args": "schedule"}


@dataclass
class TrainConfig:
    """Everything a training run needs; saved as ``config.yaml`` with every run."""

    #: What :func:`resolve_config` rescaled to ``--epochs`` (:mod:`bnas.train.phases`), for the
    #: run log; not a setting.
    phase_notes: ClassVar[tuple[str, ...]] = ()

    # -- what to train ---------------------------------------------------------------------
    arch: str | None = setting(None, "genotype name or file (latest_cell_zeroise, resnet20_1w1a, "
                                     "...)", tunable=False)
    config: str | None = setting(None, "named configuration: bnas-a, bnas-d ... bnas-h "
                                       "(architecture, size and recipe)", tunable=False)
    layers: int | None = setting(None, "cells of a cell network (default: the configuration's)",
                                 tunable=False)
    init_channels: int | None = setting(None, "initial channels C of a cell network",
                                        tunable=False)
    num_classes: int | None = setting(None, "classes (default: the dataset's)", tunable=False)
    binarizer: str = setting("plain", "binarization scheme (bnas list binarizers)", tunable=False)
    binarizer_hparams: dict = setting({}, "the scheme's hyper-parameters, KEY=VALUE (repeatable)",
                                      flag=HPARAM_FLAG, tunable=False)
    layer_overrides: dict = setting({}, "LAYER=KIND: build that binary convolution as KIND "
                                        "(real_weight: weights imported from BNAS; repeatable)",
                                    flag="--layer-override", tunable=False)
    # -- data ---------------------------------------------------------------------------------
    dataset: str = setting("cifar10", "dataset: " + ", ".join(DATASETS.names()), tunable=False)
    data: str | None = setting(None, "dataset root (CIFAR download dir; train/ and val/ folders)",
                               tunable=False)
    image_size: int | None = setting(None, "input resolution (default: the dataset's)",
                                     tunable=False)
    loader: str = setting("torch", "data loader: " + ", ".join(LOADERS.names())
                          + " (dali: NVIDIA DALI, image folders on GPUs)", tunable=False)
    workers: int = setting(4, "data-loading worker processes per training process", tunable=False)
    train_subset: int | float | None = setting(None, "train on this many samples (or this "
                                                     "fraction)", tunable=False)
    val_subset: int | float | None = setting(None, "validate on this many samples (or this "
                                                   "fraction)", tunable=False)
    data_recipe: str = setting("bnas", "image pipeline: bnas (CIFAR-10 statistics, ImageNet "
                                       "colour jitter) or seeds (RBNN/ReCU/SiMaN: CIFAR-10 with "
                                       "ImageNet's statistics, no jitter)")
    # -- optimisation -------------------------------------------------------------------------
    epochs: int = setting(100, "training epochs", tunable=False)
    batch_size: int = setting(256, "global batch size, split evenly across processes")
    eval_batch_size: int | None = setting(None, "global validation batch size (default: "
                                                "--batch-size; the seeds' -bt)", tunable=False)
    optimizer: str = setting("sgd", "sgd or adam (Bop schemes use it for the real-valued "
                                    "parameters)")
    lr: float = setting(0.1, "peak learning rate")
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(0.0, "weight decay (the scheme decides which parameters decay)")
    schedule: str = setting("cosine", "learning-rate schedule: " + ", ".join(SCHEDULES.names()))
    schedule_args: dict = setting({}, "schedule settings, KEY=VALUE (e.g. period=50 for "
                                      "cosine_restarts)", flag="--schedule-arg", tunable=False)
    warmup_epochs: int = setting(0, "linear warm-up epochs: lr * (e + 1) / warmup")
    label_smoothing: float = setting(0.0, "label smoothing of the training loss")
    grad_clip: float | None = setting(None, "clip the gradient norm to this value (0 or none: "
                                            "off)")
    drop_path: float = setting(0.0, "drop-path probability of cell networks, ramped up linearly")
    # -- execution ----------------------------------------------------------------------------
    seed: int = setting(0, "random seed", tunable=False)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N", tunable=False)
    amp: str | None = setting(None, "mixed precision: " + " or ".join(AMP_MODES) + " (none: off)",
                              tunable=False)
    channels_last: bool = setting(False, "channels-last memory format", tunable=False)
    sync_bn: bool = setting(False, "synchronise BatchNorm statistics across GPUs", tunable=False)
    progress: bool = setting(True, "show a progress bar", tunable=False)
    print_freq: int | None = setting(None, "log the running loss and top-1 every N training "
                                           "batches (the seeds' --print_freq)", tunable=False)
    out: str | None = setting(None, "run directory (default: runs/train-<arch>-<time>)",
                              tunable=False)
    resume: bool | str = setting(False, "continue from the run directory's checkpoint (or a "
                                        "checkpoint file)", tunable=False, nargs="?", const=True,
                                 metavar="RUN_DIR|CHECKPOINT")
    init_weights: str | None = setting(None, "start a new run (fresh optimizer and schedule) "
                                             "from these weights: a best.pt, checkpoint.pt or "
                                             "bnas import file of the same architecture",
                                       tunable=False)

    # -- derived ------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        """The dataset family, ``cifar`` or ``imagenet``."""
        return dataset_info(self.dataset).family

    @property
    def name(self) -> str:
        """What is trained, for run names and logs."""
        return self.arch or self.config or "model"

    def validate(self) -> TrainConfig:
        """Normalise spellings and raise :class:`BnasError` for impossible values."""
        if self.config is not None:
            self.config = CONFIGS.canonical(self.config)
        self.binarizer = BINARIZERS.canonical(self.binarizer)
        dataset_info(self.dataset)
        self.loader = LOADERS.canonical(self.loader)
        self.data_recipe = DATA_RECIPES.canonical(self.data_recipe)
        if self.amp in ("none", "off", ""):
            self.amp = None
        if self.amp is not None and self.amp not in AMP_MODES:
            raise unknown("--amp mode", self.amp, AMP_MODES)
        if self.optimizer not in OPTIMIZERS:
            raise unknown("optimizer", self.optimizer, OPTIMIZERS)
        if self.grad_clip is not None and self.grad_clip <= 0:
            self.grad_clip = None
        check_all(self, ("epochs", "batch_size"), lambda v: isinstance(v, int) and v >= 1,
                  "an integer >= 1")
        check_all(self, ("workers", "warmup_epochs"), lambda v: isinstance(v, int) and v >= 0,
                  "an integer >= 0")
        check_all(self, ("layers", "init_channels", "num_classes", "image_size", "eval_batch_size",
                         "print_freq"),
                  lambda v: isinstance(v, int) and v >= 1, "an integer >= 1", optional=True)
        check("lr", self.lr, lambda v: finite(v) and v > 0, "a number > 0")
        check_all(self, ("momentum", "weight_decay", "label_smoothing"),
                  lambda v: finite(v) and v >= 0, "a number >= 0")
        check("label_smoothing", self.label_smoothing, lambda v: v < 1, "below 1")
        check("drop_path", self.drop_path, lambda v: finite(v) and 0 <= v < 1, "in [0, 1)")
        check_all(self, ("train_subset", "val_subset"), _is_subset,
                  "a count >= 1 or a fraction in (0, 1)", optional=True)
        for name in (*DEPENDENT, "layer_overrides"):
            if not isinstance(getattr(self, name), dict):
                raise BnasError(f"{name} must be a mapping of names to values")
        build_schedule(self.schedule, self.epochs, 1, self.warmup_epochs, self.schedule_args)
        return self


def _is_subset(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return (isinstance(value, int) and value >= 1) or (isinstance(value, float) and 0 < value < 1)


FIELDS = fields(TrainConfig)


# -- presets ---------------------------------------------------------------------------------
def preset_names() -> list[str]:
    """The presets shipped in ``bnas/recipes/``."""
    return presets.names()


def load_preset(preset: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A preset's settings; ``extends: NAME`` includes another preset first."""
    file = presets.path(preset)
    if file in _seen:
        raise BnasError(f"preset {file} extends itself")
    data = presets.read(file)
    base = data.pop("extends", None)
    _check_keys(data, f"preset {file}")
    if base is None:
        return data
    return _combine([load_preset(base, (*_seen, file)), data])


def _check_keys(settings: dict[str, Any], where: str) -> None:
    bad = sorted(set(settings) - set(FIELDS))
    if bad:
        raise BnasError(f"unknown setting{'s' if len(bad) > 1 else ''} {', '.join(bad)} in {where}")


def _owner_value(owner: str, value: Any) -> Any:
    return BINARIZERS.canonical(value) if owner == "binarizer" and value is not None else value


def _combine(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge ``layers``, later ones winning. A layer's ``binarizer_hparams`` (``schedule_args``)
    count only if the binarizer (schedule) in effect at that layer is the final one."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if k not in DEPENDENT})
    for key, owner in DEPENDENT.items():
        final = _owner_value(owner, merged.get(owner))
        in_effect, values = None, {}
        for layer in layers:
            in_effect = _owner_value(owner, layer.get(owner, in_effect))
            if layer.get(key) and in_effect == final:
                values.update(layer[key])
        if values or any(key in layer for layer in layers):
            merged[key] = values
    return merged


def resolve_config(preset: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """The configuration of a run: defaults < binarizer recipe < preset < ``overrides``."""
    given = {k: v for k, v in overrides.items() if v is not None}
    _check_keys(given, "the options")
    config = given.get("config")
    if preset is None and config is not None:
        preset = CONFIGS.get(config).recipe
    layer = load_preset(preset) if preset is not None else {}
    defaults = {name: getattr(TrainConfig(), name) for name in FIELDS}
    pick = {**defaults, **layer, **given}
    family = dataset_info(pick["dataset"]).family
    recipe = BINARIZERS.get(pick["binarizer"]).recipe(family)
    _check_keys(recipe, f"the {pick['binarizer']} recipe")
    recipe["binarizer"] = pick["binarizer"]
    scaled, notes = scale_phases(_combine([defaults, recipe, layer]), given)
    cfg = TrainConfig(**_combine([defaults, recipe, layer, scaled, given])).validate()
    cfg.phase_notes = tuple(notes)
    return cfg


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain data for YAML."""
    return dataclasses.asdict(cfg)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved configuration as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(config_dict(cfg), sort_keys=False))
