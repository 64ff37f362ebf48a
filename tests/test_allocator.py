"""``bnas`` as a program restarts its compute commands once with glibc's huge-page tunable."""
from __future__ import annotations

import os
import sys

import pytest

from bnas import allocator, cli


@pytest.fixture
def capable(monkeypatch):
    monkeypatch.setattr(allocator, "_glibc_supports_hugetlb", lambda: True)
    monkeypatch.setattr(allocator, "_huge_pages_enabled", lambda: True)


def test_tuned_environment_adds_the_tunable_once(capable):
    assert allocator.tuned_environment({"A": "1"}) == {"A": "1", "GLIBC_TUNABLES": allocator.TUNABLE}
    other = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert allocator.tuned_environment(other)["GLIBC_TUNABLES"] == (
        "glibc.malloc.arena_max=2:" + allocator.TUNABLE)
    assert allocator.tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
    assert allocator.tuned_environment({"BNAS_HUGEPAGES": "0"}) is None


def test_nothing_changes_without_support(monkeypatch):
    monkeypatch.setattr(allocator, "_huge_pages_enabled", lambda: False)
    assert allocator.tuned_environment({}) is None


class Exec(Exception):
    pass


@pytest.fixture
def execs(monkeypatch, capable):
    calls = []

    def fake_execve(path, args, env):
        calls.append((path, args, env))
        raise Exec

    monkeypatch.setattr(os, "execve", fake_execve)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    return calls


def test_program_restarts_compute_commands_with_the_tunable(execs, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bnas", "train", "--arch", "x"])
    with pytest.raises(Exec):
        cli.main()
    (path, args, env), = execs
    assert (path, args) == (sys.executable, [sys.executable, "-m", "bnas", "train", "--arch", "x"])
    assert env["GLIBC_TUNABLES"] == allocator.TUNABLE


def test_other_commands_and_calls_with_arguments_do_not_restart(execs, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bnas", "list"])
    assert cli.main() == 0
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert not execs
