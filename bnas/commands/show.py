"""``bnas show``: what a network costs (see :mod:`bnas.profiling`): parameters (binary and
real-valued), FLOPs, binary operations, OPs = FLOPs + BOPs/64, packed size, output shape and a
per-layer table. Several names: their totals side by side. ``--latency`` also times each network
through the bit-packed engine (batch 1, this machine)."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

import torch

from .. import genotype
from ..errors import BnasError, unknown
from ..model import CONFIGS, build_model
from ..options import HPARAM_FLAG, key_value, key_values
from ..profiling import Profile, si, profile
from ..search.cost import COST_KINDS
from . import command_parser

EPILOG = """\
FLOPs count real-valued multiply-accumulates and BOPs binary ones (both operands 1-bit), as in
the binary-network papers; only convolutions and linear layers are counted.

examples:
  bnas show bnas-a
  bnas show latest_cell --dataset cifar10 --layers 8 --init-channels 16
  bnas show resnet20_1w1a --binarizer rbnn --binarizer-hparam a32=true
  bnas show runs/search/genotype.json --json
  bnas show bnas-a latest_cell resnet20_1w1a             # side by side
  bnas show my_arch latest_cell resnet20_1w1a --dataset digits --layers 8 --latency
(side by side, --layers and --init-channels size the cell genotypes; fixed networks keep theirs)
"""


def resolve_name(name: str) -> tuple[str | None, str | None]:
    """``(architecture, configuration)`` for a NAME that may be either, or a genotype file."""
    if name in CONFIGS:
        return None, CONFIGS.canonical(name)
    if name.endswith(".json") or os.sep in name or os.path.isfile(name) or genotype.find(name):
        return name, None
    raise unknown("architecture or configuration", name, genotype.names() + CONFIGS.names())


def describe(args: argparse.Namespace, name: str,
             cells_only: bool = False) -> tuple[dict[str, Any], Profile]:
    """Build the network ``name`` at the size the arguments give (with ``cells_only``, the size
    applies to cell genotypes and fixed networks keep theirs); its description (with its latency
    through the packed engine, ``latency_s``, under ``--latency``) and its :class:`Profile`."""
    arch, config = resolve_name(name)
    if config and args.config and CONFIGS.canonical(args.config) != config:
        raise BnasError(f"'{name}' is a configuration; --config {args.config} contradicts it")
    sized = not (cells_only and arch is not None and genotype.load(arch).kind == "fixed")
    model = build_model(arch, dataset=args.dataset, num_classes=args.num_classes,
                        layers=args.layers if sized else None,
                        init_channels=args.init_channels if sized else None,
                        config=config or args.config, binarizer=args.binarizer,
                        **key_values(args.binarizer_hparams, HPARAM_FLAG))
    cells = getattr(model, "cells", None)
    info = {"name": name, "architecture": model.genotype.name, "kind": model.genotype.kind,
            "configuration": config or args.config, "dataset": model.dataset,
            "cells": len(cells) if cells is not None else None,
            "binarizer": model.binarizer.config()}
    prof = profile(model)
    if args.latency:
        info["latency_s"] = COST_KINDS.get("latency").network(model, prof.input_size, prof)
    return info, prof


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


#: The rows of a side-by-side comparison: label and the figure of one network.
COMPARED: list[tuple[str, Any]] = [
    ("architecture", lambda info, p: info["architecture"]),
    ("kind", lambda info, p: info["kind"] + (f", {info['cells']} cells" if info["cells"] else "")),
    ("dataset", lambda info, p: info["dataset"]),
    ("parameters", lambda info, p: f"{p.params:,}"),
    ("binary parameters", lambda info, p: f"{p.binary_params:,}"),
    ("FLOPs", lambda info, p: si(p.flops)),
    ("BOPs", lambda info, p: si(p.bops)),
    ("OPs", lambda info, p: si(p.ops)),
    ("packed size", lambda info, p: f"{p.size_bytes / 2**20:.2f} MiB"),
    ("latency, packed", lambda info, p: COST_KINDS.get("latency").format(info["latency_s"])),
]


def compare(described: list[tuple[dict[str, Any], Profile]]) -> str:
    """The totals of several networks, one column each."""
    header = ["", *(info["name"] for info, _ in described)]
    rows = [[label, *(str(figure(info, p)) for info, p in described)] for label, figure in COMPARED
            if label != "latency, packed" or all("latency_s" in info for info, _ in described)]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths))).rstrip() for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if len(args.name) > 1:
        if args.latency:
            COST_KINDS.get("latency").check()  # one line, before any network is built
        described = [describe(args, name, cells_only=True) for name in args.name]
        if args.json:
            print(json.dumps([{**info, **prof.to_dict()} for info, prof in described], indent=2))
        else:
            print(compare(described))
        return 0
    info, prof = describe(args, args.name[0])
    if args.json:
        print(json.dumps({**info, **prof.to_dict()}, indent=2))
        return 0
    blocks = [_header(info), prof.summary()]
    if "latency_s" in info:
        blocks[-1] += (f"\nlatency     {COST_KINDS.get('latency').format(info['latency_s'])} "
                       f"(packed engine, batch 1, {torch.get_num_threads()} threads)")
    if not args.no_table:
        blocks.append(prof.table())
    print("\n\n".join(blocks))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = command_parser(
        subparsers, "show", run, help="parameters, FLOPs, BOPs, size and layers of a network",
        description=__doc__.replace("``", "'").replace(" (see :mod:`bnas.profiling`)", ""),
        epilog=EPILOG)
    parser.add_argument("name", metavar="NAME", nargs="+",
                        help="a genotype name or file, or a configuration (bnas-a, bnas-d..h); "
                             "several: their totals side by side")
    parser.add_argument("--dataset", help="dataset the network is built for (default: the "
                                          "configuration's, else cifar10)")
    parser.add_argument("--num-classes", type=int, help="classes (default: the dataset's)")
    parser.add_argument("--layers", type=int, help="cells of a cell network")
    parser.add_argument("--init-channels", type=int, help="initial channels of a cell network")
    parser.add_argument("--config", help="a configuration whose size and dataset are the defaults")
    parser.add_argument("--binarizer", default="plain", help="binarization scheme (default: plain)")
    parser.add_argument(HPARAM_FLAG, dest="binarizer_hparams", type=key_value, action="append",
                        default=[], metavar="KEY=VALUE",
                        help="a hyper-parameter of the binarizer (repeatable)")
    parser.add_argument("--no-table", action="store_true", help="totals only, no per-layer table")
    parser.add_argument("--latency", action="store_true",
                        help="also time the network through the bit-packed engine (batch 1)")
    parser.add_argument("--json", action="store_true", help="print JSON")
