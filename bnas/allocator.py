"""The memory allocator of CPU runs: tcmalloc where it is installed, huge pages for glibc's
otherwise.

On CPUs every activation tensor is a ``malloc``, tens of thousands per training step. glibc's
allocator serves them badly in two ways. Blocks below its mmap threshold (which grows to 32 MB)
come from one heap that fragments: it grows well past the blocks alive at any time. Blocks
above the threshold (e.g. activations at batch 256) are mapped afresh, so the kernel faults in
and zeroes their pages every step. tcmalloc (gperftools) keeps freed spans by size and hands
them out again, which avoids both (the figures: README, "Speed and memory"). Where tcmalloc is
missing, glibc 2.35 and later can at least take transparent huge pages for its fresh mappings
(``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``: 2 MB pages, 512 times fewer faults than 4 kB ones).

Both settings are read when a process starts, so the ``bnas`` program re-executes itself once
for the commands that train (:func:`reexec_with_tuned_allocator`). ``BNAS_ALLOCATOR`` chooses:
``auto`` (the default: tcmalloc if found, else huge pages where glibc and the kernel offer
them), ``tcmalloc``, ``hugepages`` or ``system`` (change nothing). Nothing changes where the
choice is already in effect or the user preloads an allocator of their own.
"""
from __future__ import annotations

import ctypes.util
import os
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .errors import BnasError
from .registry import Registry

CHOICE_VARIABLE = "BNAS_ALLOCATOR"
TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
TCMALLOC_NAMES = ("tcmalloc_minimal", "tcmalloc")
#: Allocators a user may preload themselves (then ``auto`` leaves the process alone).
PRELOADED_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")
#: gperftools reports every allocation above 1 GiB on stderr by default; ImageNet batches make
#: such allocations routinely.
QUIET_LARGE_ALLOCATIONS = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 50)}

Environment = dict[str, str]


class Unavailable(Exception):
    """An allocator setting this machine cannot use (the message says why)."""


def find_tcmalloc() -> str | None:
    """The tcmalloc library to preload: in this Python's or the active conda environment's
    ``lib/`` (``conda install gperftools``), else on the system's library path (Debian and
    Ubuntu: ``apt-get install libtcmalloc-minimal4``); None when there is none."""
    prefixes = [sys.prefix, os.environ.get("CONDA_PREFIX", "")]
    for prefix in filter(None, prefixes):
        for name in TCMALLOC_NAMES:
            found = sorted((Path(prefix) / "lib").glob(f"lib{name}.so*"))
            if found:
                return str(found[0])
    for name in TCMALLOC_NAMES:
        library = ctypes.util.find_library(name)
        if library:
            return library
    return None


def _preloaded(environ: Mapping[str, str]) -> str | None:
    """The allocator of :data:`PRELOADED_ALLOCATORS` that ``LD_PRELOAD`` names, if any."""
    preload = environ.get("LD_PRELOAD", "")
    return next((name for name in PRELOADED_ALLOCATORS if name in preload), None)


def _with_tcmalloc(environ: Mapping[str, str]) -> Environment | None:
    if _preloaded(environ) is not None:
        return None
    preload = environ.get("LD_PRELOAD", "")
    library = find_tcmalloc()
    if library is None:
        raise Unavailable("no tcmalloc library found (Debian/Ubuntu: apt-get install "
                          "libtcmalloc-minimal4; conda: conda install gperftools)")
    return {**QUIET_LARGE_ALLOCATIONS, **environ,
            "LD_PRELOAD": f"{library}:{preload}" if preload else library}


def _glibc_supports_hugetlb() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    lib, version = platform.libc_ver()
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return lib == "glibc" and (major, minor) >= (2, 35)


def _huge_pages_enabled() -> bool:
    """Whether the kernel grants transparent huge pages to ``madvise`` (``always`` or
    ``madvise`` selected in ``/sys/kernel/mm/transparent_hugepage/enabled``)."""
    try:
        return "[never]" not in THP_SETTING.read_text()
    except OSError:
        return False


def _with_huge_pages(environ: Mapping[str, str]) -> Environment | None:
    current = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in current:
        return None
    if not _glibc_supports_hugetlb():
        raise Unavailable("huge pages for malloc need glibc 2.35 or later on Linux")
    if not _huge_pages_enabled():
        raise Unavailable(f"transparent huge pages are off ({THP_SETTING})")
    return {**environ, "GLIBC_TUNABLES": f"{current}:{TUNABLE}" if current else TUNABLE}


def _best_available(environ: Mapping[str, str]) -> Environment | None:
    """tcmalloc, else huge pages, else nothing."""
    for strategy in (_with_tcmalloc, _with_huge_pages):
        try:
            return strategy(environ)
        except Unavailable:
            continue
    return None


ALLOCATORS: Registry[Callable[[Mapping[str, str]], Environment | None]] = Registry("allocator")
ALLOCATORS.add("auto", _best_available)
ALLOCATORS.add("tcmalloc", _with_tcmalloc)
ALLOCATORS.add("hugepages", _with_huge_pages)
ALLOCATORS.add("system", lambda environ: None)


def tuned_environment(environ: Mapping[str, str]) -> Environment | None:
    """``environ`` with the allocator that ``BNAS_ALLOCATOR`` chooses (see the module
    docstring), or None when nothing needs to change. Raises :class:`~bnas.errors.BnasError`
    for an unknown choice or one this machine cannot honour."""
    choice = environ.get(CHOICE_VARIABLE, "auto")
    try:
        return ALLOCATORS.get(choice)(environ)
    except Unavailable as exc:
        raise BnasError(f"{CHOICE_VARIABLE}={choice}: {exc}") from None


def describe(environ: Mapping[str, str]) -> str:
    """The allocator a process started with ``environ`` uses, in words (for reports)."""
    preloaded = _preloaded(environ)
    if preloaded is not None:
        return preloaded
    if TUNABLE in environ.get("GLIBC_TUNABLES", ""):
        return "C library's, with transparent huge pages"
    return "C library's"


def reexec_with_tuned_allocator(argv: Sequence[str]) -> None:
    """Replace this process by ``python -m bnas ARGV`` with :func:`tuned_environment` (same
    process id, so launchers such as torchrun keep tracking it); return if there is nothing to
    change or the restart fails."""
    env = tuned_environment(os.environ)
    if env is None or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, "-m", "bnas", *argv], env)
    except OSError:
        pass  # carry on in this process, with the allocator it started with
