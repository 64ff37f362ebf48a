"""A run's directory and its log.

Rank 0 creates the directory (the others wait for it) and writes the log: INFO messages,
time-stamped, to a file in the directory and to stderr. Without ``--out`` a run gets
``runs/<kind>-<name>-<time>``, the time taken on rank 0 so that every process agrees.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from .context import Context


def default_run_dir(kind: str, name: str) -> str:
    """``runs/<kind>-<name>-<YYYYmmdd-HHMMSS>``."""
    return f"runs/{kind}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def make_run_dir(ctx: Context, out: str | Path) -> Path:
    """``out`` (rank 0's choice on every process), created by rank 0."""
    path = Path(ctx.broadcast_object(str(out))).expanduser()
    if ctx.is_main:
        path.mkdir(parents=True, exist_ok=True)
    ctx.barrier()
    return path


def attach_run_log(log: logging.Logger, file: Path, enabled: bool) -> list[logging.Handler]:
    """Send ``log``'s INFO messages, time-stamped, to ``file`` and stderr (when ``enabled``:
    rank 0 only); returns the handlers, for :func:`detach_run_log` at the end of the run."""
    log.setLevel(logging.INFO)
    log.propagate = False
    if not enabled:
        return []
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.FileHandler(file), logging.StreamHandler(sys.stderr)]
    for handler in handlers:
        handler.setFormatter(fmt)
        log.addHandler(handler)
    return handlers


def detach_run_log(log: logging.Logger, handlers: list[logging.Handler]) -> None:
    """Remove and close what :func:`attach_run_log` attached."""
    for handler in handlers:
        log.removeHandler(handler)
        handler.close()
