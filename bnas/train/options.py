"""Command-line options generated from :class:`~bnas.train.config.TrainConfig`'s fields, so
that every setting has exactly one name, one default and one help text.

Every option defaults to ``None`` ("not given"), so a preset or recipe value is only replaced
by what the user typed. Flags: ``--field-name``; booleans also ``--no-field-name``; the two
mapping fields take ``KEY=VALUE`` repeatedly (values parsed as YAML scalars).
"""
from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ..errors import BnasError, unknown
from ..model.configs import CONFIGS
from .config import FIELDS, preset_names

#: Flags that differ from ``--field-name``.
FLAGS = {"binarizer_hparams": "--binarizer-hparam", "schedule_args": "--schedule-arg",
         "layer_overrides": "--layer-override"}


def _count_or_fraction(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a fraction, got {text!r}") from None
    if value.is_integer() and value >= 1:
        return int(value)
    if 0 < value < 1:
        return value
    raise argparse.ArgumentTypeError(f"expected a count >= 1 or a fraction in (0, 1), got {text}")


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"cannot read the value of {text!r}") from None


def _none_or_float(text: str) -> float:
    """A number; ``none`` or ``off`` read as 0 (which the configuration treats as off)."""
    if text.lower() in ("none", "off"):
        return 0.0
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def _argparse_kwargs(name: str, annotation: str) -> dict[str, Any]:
    """How a field of type ``annotation`` (its source text) is read from the command line."""
    if name == "resume":
        return {"nargs": "?", "const": True, "metavar": "RUN_DIR|CHECKPOINT"}
    if annotation == "dict":
        return {"type": _key_value, "action": "append", "metavar": "KEY=VALUE"}
    if annotation == "bool":
        return {"action": argparse.BooleanOptionalAction}
    if annotation.startswith("int | float"):
        return {"type": _count_or_fraction, "metavar": "N|FRACTION"}
    if annotation.startswith("float | None"):
        return {"type": _none_or_float}
    if annotation.startswith("int"):
        return {"type": int}
    if annotation.startswith("float"):
        return {"type": float}
    return {"type": str}


def add_config_options(parser: argparse.ArgumentParser, fields: Iterable[str],
                       title: str = "settings (override the recipe)") -> None:
    """One option per configuration field in ``fields``; ``--config`` also takes presets."""
    group = parser.add_argument_group(title)
    for name in fields:
        field = FIELDS[name]
        flag = FLAGS.get(name, "--" + name.replace("_", "-"))
        help_text = field.metadata["help"]
        if name == "config":
            help_text = (f"a named configuration ({', '.join(CONFIGS.names())}: architecture, "
                         f"size and recipe), a recipe preset ({', '.join(preset_names())}) or a "
                         f"YAML file of settings (e.g. a run's config.yaml)")
        group.add_argument(flag, dest=name, default=None, help=help_text,
                           **_argparse_kwargs(name, str(field.type)))


def overrides_from_args(args: argparse.Namespace,
                        fields: Iterable[str]) -> tuple[str | None, dict[str, Any]]:
    """``(preset, overrides)`` for :func:`~bnas.train.config.resolve_config` from parsed args.

    ``--config`` naming a model configuration sets the ``config`` field (whose recipe is then
    the preset); anything else it names is the preset itself.
    """
    overrides: dict[str, Any] = {}
    for name in fields:
        value = getattr(args, name, None)
        if value is not None and FIELDS[name].type == "dict":
            keys = [k for k, _ in value]
            if len(set(keys)) != len(keys):
                raise BnasError(f"{FLAGS[name]} sets the same key twice")
            value = dict(value)
        overrides[name] = value
    preset = None
    config = overrides.get("config")
    if config is not None and config not in CONFIGS:
        if config not in preset_names() and not Path(config).expanduser().is_file():
            raise unknown("configuration, preset or file", config, [*CONFIGS.names(), *preset_names()])
        preset, overrides["config"] = config, None
    return preset, overrides
