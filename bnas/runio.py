"""What runs (search, training, tuning) share: atomic writes, the run log, the epoch callback."""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

#: ``on_epoch_end(epoch, metrics)``: called by a search or a training run after each epoch.
EpochCallback = Callable[[int, dict[str, Any]], None]


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file next to ``path``, flush it to disk, then rename it
    over ``path``: readers see either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def attach_run_log(log: logging.Logger, file: Path, enabled: bool) -> list[logging.Handler]:
    """Send ``log``'s INFO messages, time-stamped, to ``file`` and stderr (when ``enabled``:
    rank 0 only); returns the handlers so the caller can remove them at the end of the run."""
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
