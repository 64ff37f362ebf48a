"""``bnas draw``: diagrams of a genotype with graphviz (see :mod:`bnas.viz`): the normal and
reduction cells of a searched genotype, or the block structure of a fixed network."""
from __future__ import annotations

import argparse

from ..model import CONFIGS
from ..viz import FORMATS, render_genotype
from . import command_parser
from .show import resolve_name


def run(args: argparse.Namespace) -> int:
    arch, config = resolve_name(args.name)
    for path in render_genotype(arch or CONFIGS.get(config).arch, args.out, args.format):
        print(path)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = command_parser(
        subparsers, "draw", run, help="draw the cells of a genotype (pdf, png or svg)",
        description=__doc__.replace("``", "'").replace(" (see :mod:`bnas.viz`)", ""),
        epilog="Zeroise edges are dashed red: in BNAS they are real layers of the cell.\n\n"
               "examples:\n  bnas draw bnas-a --format png\n"
               "  bnas draw latest_cell --format svg --out figures\n  bnas draw resnet20_1w1a")
    parser.add_argument("name", metavar="NAME",
                        help="a genotype name or file, or a configuration (bnas-a, bnas-d..h)")
    parser.add_argument("--format", choices=FORMATS, default="pdf",
                        help="file format (default: pdf)")
    parser.add_argument("--out", default=".", metavar="DIR",
                        help="directory to write into (default: the current one)")
