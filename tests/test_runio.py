"""Files of runs: atomic writes (complete files only, with the permissions of a file made by
``open()``, one-line errors) and torch files read with one-line errors."""
from __future__ import annotations

import io
import os
import pathlib
import pickle
import stat

import pytest
import torch

from bnas.errors import BnasError
from bnas.runio import atomic_write, atomic_write_text, load_tensors


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



def test_a_path_that_cannot_be_written_is_one_error_naming_it(tmp_path):
    (tmp_path / "file").write_text("x")
    for target in (tmp_path, tmp_path / "file" / "below.pt"):  # a directory; under a file
        with pytest.raises(BnasError, match=f"cannot write {target}: "):
            atomic_write_text(target, "x")
    assert sorted(os.listdir(tmp_path)) == ["file"]


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("content, reason", [
    (b"", "empty or truncated"),
    (b"hello\n", "not a file torch.save wrote"),
    (b"\x89PNG\r\n\x1a\n", "not a file torch.save wrote"),
    (pickle.dumps({"a": 1}, protocol=4), "not a file torch.save wrote"),
    (_saved({"path": pathlib.PurePosixPath("x")}), "not only tensors and plain containers: "
                                                   "Unsupported global"),
])
def test_unreadable_torch_files_say_why_in_one_line_without_warnings(tmp_path, recwarn, content,
                                                                     reason):
    (tmp_path / "f.pt").write_bytes(content)
    with pytest.raises(BnasError) as err:
        load_tensors(tmp_path / "f.pt", "not a checkpoint")
    assert str(err.value).startswith(f"{tmp_path / 'f.pt'} is not a checkpoint ({reason}")
    assert "\n" not in str(err.value) and "weights_only" not in str(err.value)
    assert not recwarn.list


def test_tensors_load_on_the_cpu(tmp_path):
    torch.save({"w": torch.arange(3)}, tmp_path / "t.pt")
    assert torch.equal(load_tensors(tmp_path / "t.pt", "x")["w"], torch.arange(3))
