"""The ``bnas`` command line.

Each verb is a module of :mod:`bnas.commands` defining ``add_parser(subparsers)``, which
creates its sub-parser and sets ``run=`` to a function taking the parsed arguments and
returning an exit status. Bad input raises :class:`bnas.errors.BnasError`: one line on stderr,
exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__, commands
from .allocator import reexec_with_tuned_allocator
from .errors import BnasError

EXIT_BAD_INPUT = 2
#: Commands that run networks for minutes to days: as a program, ``bnas`` starts them with a
#: tuned memory allocator (:mod:`bnas.allocator`).
COMPUTE_COMMANDS = frozenset({"search", "train", "eval", "tune"})


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="bnas", description="Neural architecture search for binary networks.")
    parser.add_argument("--version", action="version", version=f"bnas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").add_parser(sub)
    return parser


def _bad_input(command: str, exc: BnasError) -> int:
    """Say what was wrong in one line on stderr; the exit status for bad input."""
    sys.stderr.write(f"bnas {command}: error: {exc}\n")
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    """Run the ``bnas`` command line on ``argv`` (default: this program's arguments)."""
    if argv is None and len(sys.argv) > 1 and sys.argv[1] in COMPUTE_COMMANDS:
        try:
            reexec_with_tuned_allocator(sys.argv[1:])
        except BnasError as exc:
            return _bad_input(sys.argv[1], exc)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except BnasError as exc:
        return _bad_input(args.command, exc)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
