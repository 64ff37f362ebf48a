"""Configuration fields and the command-line options generated from them.

A run's configuration (:class:`bnas.search.SearchConfig`, :class:`bnas.train.TrainConfig`) is a
dataclass whose fields are declared with :func:`setting`: the default, the ``--help`` text, the
flag when it is not ``--field-name``, and whether ``bnas tune`` may sample it. From those,
:func:`add_options` builds each command's options (their argparse types follow the fields'
annotations) and :func:`read_options` reads them back; an option not given is ``None``, so that
the layers under it (defaults, presets, recipes) show through. KEY=VALUE options
(``--binarizer-hparam``, the same flag in every command) go through one parser,
:func:`key_value`, which reads the value as YAML.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import yaml

from .errors import BnasError

#: The flag of a binarizer's hyper-parameters in every command.
HPARAM_FLAG = "--binarizer-hparam"


def setting(default: Any, help: str, *, flag: str | None = None, tunable: bool = True,
            **cli: Any) -> Any:
    """A configuration field: ``default``, its ``--help`` text, its ``flag`` (default
    ``--field-name``), whether ``bnas tune`` may sample it, and argparse settings that differ
    from those its annotation implies (``cli``)."""
    metadata = {"help": help, "flag": flag, "tunable": tunable, "cli": cli}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=dict, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def fields(config_class: type) -> dict[str, dataclasses.Field]:
    """The fields of a configuration dataclass, by name."""
    return {f.name: f for f in dataclasses.fields(config_class)}


def flag(field: dataclasses.Field) -> str:
    """The command-line flag of ``field``."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def tunable(field: dataclasses.Field) -> bool:
    """Whether ``bnas tune`` may sample ``field``."""
    return field.metadata.get("tunable", True)


def default(field: dataclasses.Field) -> Any:
    """The field's default value (a fresh one for mutable defaults)."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None


# -- value parsers -------------------------------------------------------------------------------
def key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with the value read as YAML (``a32=true``, ``tau_min=0.8``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"cannot read the value of {text!r}") from None


def key_values(pairs: Iterable[tuple[str, Any]], option: str) -> dict[str, Any]:
    """The ``(key, value)`` pairs of a repeated KEY=VALUE option as a dict; a key given twice is
    an error."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise BnasError(f"{option} sets '{key}' twice")
        found[key] = value
    return found


def count_or_fraction(text: str) -> int | float:
    """A count ``>= 1`` or a fraction in ``(0, 1)``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a fraction, got {text!r}") from None
    if value.is_integer() and value >= 1:
        return int(value)
    if 0 < value < 1:
        return value
    raise argparse.ArgumentTypeError(f"expected a count >= 1 or a fraction in (0, 1), got {text}")


def none_or_float(text: str) -> float:
    """A number; ``none`` or ``off`` read as 0 (which the configuration treats as off)."""
    if text.lower() in ("none", "off"):
        return 0.0
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def _argparse_kwargs(annotation: str) -> dict[str, Any]:
    """How a field of type ``annotation`` (its source text) is read from the command line."""
    if annotation.startswith("dict"):
        return {"type": key_value, "action": "append", "metavar": "KEY=VALUE"}
    if annotation == "bool":
        return {"action": argparse.BooleanOptionalAction}
    if annotation.startswith("int | float"):
        return {"type": count_or_fraction, "metavar": "N|FRACTION"}
    if annotation.startswith("float | None"):
        return {"type": none_or_float}
    if annotation.startswith("int"):
        return {"type": int}
    if annotation.startswith("float"):
        return {"type": float}
    return {"type": str}


# -- options -------------------------------------------------------------------------------------
def add_options(parser: argparse.ArgumentParser, config_class: type, names: Iterable[str],
                title: str, show_defaults: bool = False,
                help_of: Callable[[str], str | None] = lambda name: None) -> None:
    """One option per field of ``config_class`` in ``names``, in a group titled ``title``
    (the help ends with the default when ``show_defaults``; ``help_of`` may replace a help)."""
    group = parser.add_argument_group(title)
    known = fields(config_class)
    for name in names:
        field = known[name]
        help_text = help_of(name) or field.metadata["help"]
        value = default(field)
        if show_defaults and value not in (None, {}, False):
            help_text += f" (default {value})"
        group.add_argument(flag(field), dest=name, default=None, help=help_text,
                           **{**_argparse_kwargs(str(field.type)), **field.metadata.get("cli", {})})


def read_options(args: argparse.Namespace, config_class: type,
                 names: Iterable[str]) -> dict[str, Any]:
    """The values of the options :func:`add_options` added (None where not given), KEY=VALUE
    pairs as dicts."""
    known = fields(config_class)
    values: dict[str, Any] = {}
    for name in names:
        value = getattr(args, name, None)
        if value is not None and str(known[name].type).startswith("dict"):
            value = key_values(value, flag(known[name]))
        values[name] = value
    return values


def given_flags(args: argparse.Namespace, config_class: type, names: Iterable[str]) -> list[str]:
    """The flags among ``names`` that were given on the command line."""
    known = fields(config_class)
    return [flag(known[n]) for n in names if getattr(args, n, None) is not None]


# -- validation ----------------------------------------------------------------------------------
def finite(value: Any) -> bool:
    """A real number (not a bool), finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check(name: str, value: Any, ok: Callable[[Any], bool], expected: str) -> None:
    """A :class:`BnasError` ``--name must be EXPECTED, got VALUE`` unless ``ok(value)`` (a bool
    is never a number here)."""
    if isinstance(value, bool) or not ok(value):
        raise BnasError(f"--{name.replace('_', '-')} must be {expected}, got {value!r}")


def check_all(config: Any, names: Iterable[str], ok: Callable[[Any], bool], expected: str,
              optional: bool = False) -> None:
    """:func:`check` on each field of ``names`` (skipping ``None`` ones when ``optional``)."""
    for name in names:
        value = getattr(config, name)
        if not (optional and value is None):
            check(name, value, ok, expected)
