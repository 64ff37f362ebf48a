"""Files of runs: atomic writes (readers see either the old file or the complete new one), and
reading torch files of plain tensors, with one-line errors for files that cannot be."""
from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from .errors import BnasError


def new_file_mode() -> int:
    """The permissions ``open()`` gives a new file: ``0o666`` less the process's umask (which
    can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file next to ``path``, flush it to disk, then rename it
    over ``path``: readers see either the old file or the complete new one. The file gets the
    permissions of one made by ``open()`` (the temporary file's own are owner-only). A failure
    of the file system (no such directory, no permission, a directory at ``path``, a full
    disk) is a :class:`BnasError` naming ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise BnasError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def check_writable_dir(folder: str | os.PathLike, what: str) -> None:
    """Raise :class:`BnasError` now if files cannot be created in ``folder`` (made if missing),
    so that a long run does not fail only when it writes its results."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise BnasError(f"cannot write {what} in {folder}: {exc.strerror or exc}") from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` with :func:`atomic_write`."""
    atomic_write(path, lambda f: f.write(text.encode()))


def load_tensors(path: Path, not_readable: str, safe_globals: Iterable[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU (tensors and plain containers, plus
    ``safe_globals``), torch's warnings silenced; a file it cannot load is a :class:`BnasError`
    "``path`` is ``not_readable`` (the reason)"."""
    import torch  # here, not above: genotype files are written without importing torch

    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(safe_globals)):
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file, pickled code, not a torch file at all
        raise BnasError(f"{path} is {not_readable} ({_load_failure(exc)})") from None


def _load_failure(exc: Exception) -> str:
    """Why ``torch.load`` failed, in a few words (not torch's advice to unpickle code)."""
    text = str(exc).strip()
    detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0] if (
        "WeightsUnpickler error:" in text) else ""
    if isinstance(exc, EOFError):
        return "empty or truncated"
    if (isinstance(exc, (KeyError, UnicodeDecodeError)) or not text
            or detail.startswith("Unsupported operand")):  # bytes that are no pickle at all
        return "not a file torch.save wrote"
    if detail:  # a pickle of classes or functions
        return f"not only tensors and plain containers: {detail}"
    return text.splitlines()[0].split(". ")[0]
