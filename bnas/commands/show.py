"""``bnas show``: what a network costs (see :mod:`bnas.profiling`): parameters (binary and
real-valued), FLOPs, binary operations, OPs = FLOPs + BOPs/64, packed size, output shape and a
per-layer table."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

import yaml

from .. import genotype
from ..errors import BnasError, unknown
from ..model import CONFIGS, build_model
from ..profiling import Profile, profile

EPILOG = """\
FLOPs count real-valued multiply-accumulates and BOPs binary ones (both operands 1-bit), as in
the binary-network papers; only convolutions and linear layers are counted.

examples:
  bnas show bnas-a
  bnas show latest_cell --dataset cifar10 --layers 8 --init-channels 16
  bnas show resnet20_1w1a --binarizer rbnn --hparam a32=true
  bnas show runs/search/genotype.json --json
"""


def resolve_name(name: str) -> tuple[str | None, str | None]:
    """``(architecture, configuration)`` for a NAME that may be either, or a genotype file."""
    if name in CONFIGS:
        return None, CONFIGS.canonical(name)
    if name.endswith(".json") or os.sep in name or os.path.isfile(name) or genotype.find(name):
        return name, None
    raise unknown("architecture or configuration", name, genotype.names() + CONFIGS.names())


def hparam(text: str) -> tuple[str, Any]:
    """``--hparam KEY=VALUE``: the value is read as YAML (``a32=true``, ``tau_min=0.8``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"cannot read the value of {text!r}") from None


def describe(args: argparse.Namespace) -> tuple[dict[str, Any], Profile]:
    """Build the network the arguments name; its description and its :class:`Profile`."""
    arch, config = resolve_name(args.name)
    if config and args.config and CONFIGS.canonical(args.config) != config:
        raise BnasError(f"'{args.name}' is a configuration; --config {args.config} contradicts it")
    model = build_model(arch, dataset=args.dataset, num_classes=args.num_classes,
                        layers=args.layers, init_channels=args.init_channels,
                        config=config or args.config, binarizer=args.binarizer,
                        **dict(args.hparam))
    cells = getattr(model, "cells", None)
    info = {"name": args.name, "architecture": model.genotype.name, "kind": model.genotype.kind,
            "configuration": config or args.config, "dataset": model.dataset,
            "cells": len(cells) if cells is not None else None,
            "binarizer": model.binarizer.config()}
    return info, profile(model)


def _header(info: dict[str, Any]) -> str:
    scheme = info["binarizer"]
    hparams = ", ".join(f"{k}={v}" for k, v in scheme.items() if k != "name")
    parts = [f"{info['kind']} genotype", f"dataset {info['dataset']}"]
    if info["configuration"]:
        parts.insert(0, f"configuration {info['configuration']}")
    if info["cells"] is not None:
        parts.append(f"{info['cells']} cells")
    parts.append(f"binarizer {scheme['name']}" + (f" ({hparams})" if hparams else ""))
    return f"{info['architecture']}: " + ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    info, prof = describe(args)
    if args.json:
        print(json.dumps({**info, **prof.to_dict()}, indent=2))
        return 0
    blocks = [_header(info), prof.summary()]
    if not args.no_table:
        blocks.append(prof.table())
    print("\n\n".join(blocks))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "show", help="parameters, FLOPs, BOPs, size and layers of a network",
        description=__doc__.replace("``", "'").replace(" (see :mod:`bnas.profiling`)", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG)
    parser.add_argument("name", metavar="NAME",
                        help="a genotype name or file, or a configuration (bnas-a, bnas-d..h)")
    parser.add_argument("--dataset", help="dataset the network is built for (default: the "
                                          "configuration's, else cifar10)")
    parser.add_argument("--num-classes", type=int, help="classes (default: the dataset's)")
    parser.add_argument("--layers", type=int, help="cells of a cell network")
    parser.add_argument("--init-channels", type=int, help="initial channels of a cell network")
    parser.add_argument("--config", help="a configuration whose size and dataset are the defaults")
    parser.add_argument("--binarizer", default="plain", help="binarization scheme (default: plain)")
    parser.add_argument("--hparam", type=hparam, action="append", default=[], metavar="KEY=VALUE",
                        help="a hyper-parameter of the binarizer (repeatable)")
    parser.add_argument("--no-table", action="store_true", help="totals only, no per-layer table")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run)
