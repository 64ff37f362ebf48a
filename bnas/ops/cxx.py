"""Building the C++ libraries bnas compiles on first use (the fused training kernels of
:mod:`bnas.ops.native`, the packed inference kernels of :mod:`bnas.deploy.kernels`).

A library is compiled with the system's C++ compiler (``$CXX``, else ``g++`` or ``c++``) into
``$BNAS_CACHE_DIR`` (default ``~/.cache/bnas``) under a name keyed by a hash of its source, the
compiler and the flags, written atomically (a half-built library is never left behind), and
loaded with :mod:`ctypes`. The cache keeps the :data:`KEEP` most recently used builds of each
source: using a build sets its file time, and writing a new one deletes the older rest (edits of
the source, other compilers and flags otherwise pile up, one library each).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

#: Builds of one source kept in the cache (the most recently used): a process may use two builds
#: of a source (the fused kernels try two sets of flags) and another environment two more.
KEEP = 4
#: Hex digits of the source, compiler and flags' hash in a build's name (``{stem}-{hash}.so``).
KEY_DIGITS = 16


def cache_dir() -> Path:
    """Where built libraries are kept: ``$BNAS_CACHE_DIR``, else ``$XDG_CACHE_HOME/bnas``, else
    ``~/.cache/bnas``."""
    if os.environ.get("BNAS_CACHE_DIR"):
        return Path(os.environ["BNAS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bnas"


def compiler() -> str | None:
    """The C++ compiler to use, or None when there is none."""
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return name
    return None


def build(source: Path, compiler_name: str, flags: Sequence[str]) -> Path:
    """``source`` compiled with ``flags`` into a cached shared library (built once per source,
    compiler and flags). Raises :class:`subprocess.CalledProcessError` when the compiler fails
    and :class:`OSError` when the cache cannot be written."""
    flags = list(flags)
    key = hashlib.sha256(source.read_bytes() + " ".join([compiler_name, *flags]).encode())
    target = cache_dir() / f"{source.stem}-{key.hexdigest()[:KEY_DIGITS]}.so"
    if target.exists():
        with contextlib.suppress(OSError):  # a read-only cache still serves its builds
            os.utime(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler_name, *flags, str(source), "-o", tmp], check=True,
                       capture_output=True, text=True)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    prune(target.parent, source.stem)
    return target


def prune(directory: Path, stem: str, keep: int = KEEP) -> list[Path]:
    """Delete all but the ``keep`` most recently used builds of source ``stem`` in
    ``directory`` (by file time; a library a running process has loaded stays mapped there);
    the deleted paths. Files that are not such builds are left alone."""
    name = re.compile(rf"{re.escape(stem)}-[0-9a-f]{{{KEY_DIGITS}}}\.so")
    builds = []
    for path in directory.iterdir():
        if name.fullmatch(path.name):
            with contextlib.suppress(OSError):  # deleted meanwhile by another process
                builds.append((path.stat().st_mtime, path))
    builds.sort(reverse=True)
    deleted = []
    for _, path in builds[keep:]:
        with contextlib.suppress(OSError):
            path.unlink()
            deleted.append(path)
    return deleted


def load(path: Path, signatures: dict[str, list]) -> ctypes.CDLL:
    """The library at ``path`` with the argument types of its ``signatures`` set (no results)."""
    lib = ctypes.CDLL(str(path))
    for name, argtypes in signatures.items():
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = None
    return lib


def failure(compiler_name: str, error: subprocess.CalledProcessError) -> str:
    """One line saying that the compiler failed, with its last line of output."""
    detail = (error.stderr or "").strip().splitlines()
    return f"{compiler_name} failed: {detail[-1] if detail else error}"
