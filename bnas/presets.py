"""Recipe presets: readable YAML files of training settings shipped in ``bnas/recipes/``.

Every published recipe is one file: BNAS's (``bnas-cifar``, ``bnas-imagenet``, ``bnas-imagenet-amp``)
and each binarization scheme's own (``<scheme>-cifar``, ``<scheme>-imagenet``), which the
scheme names in :attr:`bnas.binarize.base.Binarizer.recipes`. :mod:`bnas.train.config` merges
them with the other layers of a run's configuration.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import BnasError, unknown

PRESET_DIR = Path(__file__).resolve().parent / "recipes"
SUFFIXES = (".yaml", ".yml", ".json")


def names() -> list[str]:
    """The presets shipped with the toolkit."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def path(preset: str | Path) -> Path:
    """The file of ``preset``: a shipped preset's name or a YAML/JSON file path."""
    given = Path(preset).expanduser()
    if given.suffix in SUFFIXES or given.is_file():
        if not given.is_file():
            raise BnasError(f"preset file not found: {given}")
        return given
    if str(preset) not in names():
        raise unknown("recipe preset", str(preset), names())
    return PRESET_DIR / f"{preset}.yaml"


def read(preset: str | Path) -> dict[str, Any]:
    """The mapping a preset file holds, as written (``extends`` included)."""
    file = path(preset)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise BnasError(f"{file}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise BnasError(f"{file}: not a text file (a preset is YAML or JSON)") from None
    except OSError as exc:
        raise BnasError(f"cannot read {file}: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise BnasError(f"{file}: a preset is a mapping of settings")
    return data
