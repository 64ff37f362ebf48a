"""Huge pages for the C library's allocator in CPU runs.

On CPUs every activation tensor is a ``malloc``. glibc serves blocks above its mmap threshold
(at most 32 MB, e.g. any activation of a batch of 256 CIFAR images with 64+ channels) with
fresh ``mmap`` s, so the kernel faults in and zeroes 4 KiB pages for every such tensor, every
step. glibc 2.35 and later can ask for transparent huge pages instead
(``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``), 512 times fewer faults: a training run on digits at
batch 256 spends 60% less time in the kernel and 20% less in all (README, "Speed and memory").
Tunables are read when a process starts, so the ``bnas`` program re-executes itself once with
the tunable set for the commands that train (:func:`reexec_with_huge_pages`); nothing changes
where the tunable is already set, glibc is older, transparent huge pages are off, or the user
sets ``BNAS_HUGEPAGES=0``.
"""
from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


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


def tuned_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """``environ`` with :data:`TUNABLE` added to ``GLIBC_TUNABLES``, or None when it needs no
    change or cannot use one (see the module docstring)."""
    current = environ.get("GLIBC_TUNABLES", "")
    if (environ.get("BNAS_HUGEPAGES") == "0" or "glibc.malloc.hugetlb" in current
            or not _glibc_supports_hugetlb() or not _huge_pages_enabled()):
        return None
    return {**environ, "GLIBC_TUNABLES": f"{current}:{TUNABLE}" if current else TUNABLE}


def reexec_with_huge_pages(argv: Sequence[str]) -> None:
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
        pass  # carry on in this process, with the default allocator settings
