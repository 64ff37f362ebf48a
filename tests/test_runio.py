"""Atomic writes: complete files only, with the permissions of a file made by ``open()``."""
from __future__ import annotations

import os
import stat

import pytest

from bnas.runio import atomic_write, atomic_write_text


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_the_umask_permissions_not_owner_only(tmp_path, umask):
    saved = os.umask(umask)
    try:
        (tmp_path / "plain.txt").write_text("x")
        atomic_write_text(tmp_path / "atomic.txt", "x")
    finally:
        os.umask(saved)
    mode = stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write(target, lambda f: f.write(b"old"))

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]

