"""One module per ``bnas`` verb; :mod:`bnas.cli` discovers them."""
from __future__ import annotations

import argparse
from collections.abc import Callable


def command_parser(subparsers: argparse._SubParsersAction, name: str,
                   run: Callable[[argparse.Namespace], int], *, help: str, description: str,
                   epilog: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``bnas NAME``: its one-line help, its description and epilog (printed as
    written), and the function that runs it."""
    parser = subparsers.add_parser(name, help=help, description=description, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=run)
    return parser
