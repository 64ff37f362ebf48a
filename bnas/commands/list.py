"""``bnas list``: every known architecture, configuration, search space, operation, binarizer
and dataset, optionally one category and fnmatch patterns (``bnas list binarizers 're*'``)."""
from __future__ import annotations

import argparse
import fnmatch
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import genotype
from ..binarize import BINARIZERS
from ..data.registry import DATASETS
from ..errors import BnasError, unknown
from ..model import CONFIGS
from ..ops import OPS, SPACES
from ..registry import Registry
from . import command_parser

Row = dict[str, Any]
WILDCARDS = "*?["


@dataclass(frozen=True)
class Category:
    """What ``bnas list`` shows for one kind of thing (an ``item``): a row per item, ``name``
    first, and the ``columns`` of the text table."""

    item: str
    rows: Callable[[], list[Row]]
    columns: tuple[str, ...]


def _architecture_rows() -> list[Row]:
    rows = []
    for name in genotype.names():
        try:
            g = genotype.load(name)
        except BnasError as exc:  # a broken user file must not hide the others
            rows.append({"name": name, "kind": "invalid", "structure": "", "description": str(exc)})
            continue
        structure = (g.space or "") if g.kind == "cell" else ", ".join(g.network)
        rows.append({"name": name, "kind": g.kind, "structure": structure,
                     "description": g.description})
    return rows


def _config_rows() -> list[Row]:
    return [{"name": name, "arch": c.arch, "dataset": c.dataset, "layers": c.layers,
             "init_channels": c.init_channels, "recipe": c.recipe, "description": c.description}
            for name, c in CONFIGS.items()]


def _space_rows() -> list[Row]:
    return [{"name": name, "ops": list(ops)} for name, ops in SPACES.items()]


def _op_rows() -> list[Row]:
    return [{"name": name, "binary": info.binary,
             "spaces": [s for s, ops in SPACES.items() if name in ops],
             "description": info.description} for name, info in OPS.items()]


def _binarizer_rows() -> list[Row]:
    return [{"name": name, "hparams": dict(cls.hparams), "paper": cls.paper,
             "networks": dict(cls.networks)} for name, cls in BINARIZERS.items()]


def _dataset_rows() -> list[Row]:
    return [{"name": name, "classes": info.num_classes or "from folders",
             "image_size": info.image_size, "family": info.family, "description": info.description}
            for name, info in DATASETS.items()]


CATEGORIES: Registry[Category] = Registry("category")
CATEGORIES.add("architectures",
               Category("architecture", _architecture_rows, ("kind", "structure", "description")),
               aliases=("architecture", "archs", "arch", "genotypes", "genotype"))
CATEGORIES.add("configs",
               Category("configuration", _config_rows,
                        ("arch", "dataset", "layers", "init_channels", "description")),
               aliases=("config", "configurations", "configuration"))
CATEGORIES.add("spaces", Category("search space", _space_rows, ("ops",)),
               aliases=("space", "search-spaces"))
CATEGORIES.add("ops", Category("operation", _op_rows, ("binary", "spaces", "description")),
               aliases=("op", "operations", "operation"))
CATEGORIES.add("binarizers", Category("binarizer", _binarizer_rows, ("hparams", "paper", "networks")),
               aliases=("binarizer", "schemes"))
CATEGORIES.add("datasets",
               Category("dataset", _dataset_rows,
                        ("classes", "image_size", "family", "description")),
               aliases=("dataset", "data"))


def _matches(name: str, include: list[str], exclude: list[str]) -> bool:
    """timm's list_models rule: any include pattern matches and no exclude pattern does."""
    return ((not include or any(fnmatch.fnmatchcase(name, p) for p in include))
            and not any(fnmatch.fnmatchcase(name, p) for p in exclude))


def collect(category: str | None, include: list[str], exclude: list[str]) -> dict[str, list[Row]]:
    """The rows to show, per category (every category when ``category`` is None).

    A pattern without wildcards that names nothing is taken for a typo: BnasError naming the
    closest known names.
    """
    names = [CATEGORIES.canonical(category)] if category else CATEGORIES.names()
    everything = {n: CATEGORIES.get(n).rows() for n in names}
    for pattern in include:
        if any(ch in pattern for ch in WILDCARDS):
            continue
        known = [row["name"] for rows in everything.values() for row in rows]
        if pattern not in known:
            what = CATEGORIES.get(names[0]).item if category else "name or category"
            raise unknown(what, pattern, known + ([] if category else CATEGORIES.names()))
    return {n: [row for row in rows if _matches(row["name"], include, exclude)]
            for n, rows in everything.items()}


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def format_rows(rows: list[Row], columns: tuple[str, ...]) -> str:
    """An aligned text table (the last column is not padded)."""
    keys = ("name", *columns)
    cells = [[k.replace("_", " ") for k in keys]] + [[_cell(row[k]) for k in keys] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(keys) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[-1]]).rstrip()
                     for r in cells)


def run(args: argparse.Namespace) -> int:
    terms = list(args.terms)
    category = terms.pop(0) if terms and terms[0] in CATEGORIES else None
    found = collect(category, terms, args.exclude)
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    blocks = [f"{name}:\n" + format_rows(rows, CATEGORIES.get(name).columns)
              for name, rows in found.items() if rows]
    if blocks:
        print("\n\n".join(blocks))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = command_parser(
        subparsers, "list", run, help="list architectures, configurations, spaces, ops, binarizers, datasets",
        description=__doc__.split("\n\n")[0].replace("``", "'"),
        epilog="categories: " + ", ".join(CATEGORIES.names()) + "\n\nexamples:\n"
               "  bnas list\n  bnas list binarizers\n  bnas list architectures 'resnet*'\n"
               "  bnas list 'bnas-*' --exclude 'bnas-h'\n  bnas list ops --json")
    parser.add_argument("terms", nargs="*", metavar="TERM",
                        help="optionally a category first, then fnmatch patterns on names")
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                        help="leave out names matching PATTERN (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON, one list per category")
