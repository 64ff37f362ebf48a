"""``bnas train``'s (and ``eval``'s and ``tune``'s) options, generated from
:class:`~bnas.train.config.TrainConfig`'s fields (:mod:`bnas.options`), and ``--config``, which
names a model configuration, a recipe preset or a settings file.

Every option defaults to ``None`` ("not given"), so a preset or recipe value is only replaced
by what the user typed. Flags: ``--field-name``; booleans also ``--no-field-name``; the mapping
fields take ``KEY=VALUE`` repeatedly (values parsed as YAML scalars).
"""
from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import unknown
from ..model.configs import CONFIGS
from ..options import add_options, read_options
from .config import TrainConfig, preset_names


def _config_help(name: str) -> str | None:
    if name != "config":
        return None
    return (f"a named configuration ({', '.join(CONFIGS.names())}: architecture, size and "
            f"recipe), a recipe preset ({', '.join(preset_names())}) or a YAML file of settings "
            f"(e.g. a run's config.yaml)")


def add_config_options(parser: argparse.ArgumentParser, fields: Iterable[str],
                       title: str = "settings (override the recipe)") -> None:
    """One option per configuration field in ``fields``; ``--config`` also takes presets."""
    add_options(parser, TrainConfig, fields, title, help_of=_config_help)


def overrides_from_args(args: argparse.Namespace,
                        fields: Iterable[str]) -> tuple[str | None, dict[str, Any]]:
    """``(preset, overrides)`` for :func:`~bnas.train.config.resolve_config` from parsed args.

    ``--config`` naming a model configuration sets the ``config`` field (whose recipe is then
    the preset); anything else it names is the preset itself.
    """
    overrides = read_options(args, TrainConfig, fields)
    preset = None
    config = overrides.get("config")
    if config is not None and config not in CONFIGS:
        if config not in preset_names() and not Path(config).expanduser().is_file():
            raise unknown("configuration, preset or file", config, [*CONFIGS.names(), *preset_names()])
        preset, overrides["config"] = config, None
    return preset, overrides
