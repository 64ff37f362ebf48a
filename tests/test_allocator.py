"""``bnas`` as a program restarts its compute commands once with a tuned memory allocator:
tcmalloc where it is installed, glibc's huge pages otherwise, as ``BNAS_ALLOCATOR`` chooses."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bnas import allocator, cli
from bnas.errors import BnasError


@pytest.fixture
def huge_pages(monkeypatch):
    monkeypatch.setattr(allocator, "_glibc_supports_hugetlb", lambda: True)
    monkeypatch.setattr(allocator, "_huge_pages_enabled", lambda: True)


@pytest.fixture
def fake_tcmalloc(monkeypatch, tmp_path):
    """A tcmalloc 'installed' in this Python's prefix (found before the system's)."""
    (tmp_path / "lib").mkdir()
    library = tmp_path / "lib" / "libtcmalloc_minimal.so.4"
    library.write_bytes(b"")
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    return str(library)


@pytest.fixture
def no_tcmalloc(monkeypatch):
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)


def test_auto_preloads_tcmalloc_once(fake_tcmalloc, huge_pages):
    env = allocator.tuned_environment({"A": "1"})
    assert env["A"] == "1" and env["LD_PRELOAD"] == fake_tcmalloc
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40
    assert "GLIBC_TUNABLES" not in env
    assert allocator.tuned_environment(env) is None  # the restarted process stays as it is
    env = allocator.tuned_environment({"LD_PRELOAD": "libfoo.so"})
    assert env["LD_PRELOAD"] == f"{fake_tcmalloc}:libfoo.so"
    # a user's own allocator, or their own large-allocation threshold, is left alone
    assert allocator.tuned_environment({"LD_PRELOAD": "/opt/libjemalloc.so.2"}) is None
    env = allocator.tuned_environment({"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": "5"})
    assert env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == "5"


def test_auto_falls_back_to_huge_pages_once(no_tcmalloc, huge_pages):
    env = allocator.tuned_environment({"A": "1"})
    assert env == {"A": "1", "GLIBC_TUNABLES": allocator.TUNABLE}
    assert allocator.tuned_environment(env) is None
    other = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert allocator.tuned_environment(other)["GLIBC_TUNABLES"] == (
        "glibc.malloc.arena_max=2:" + allocator.TUNABLE)
    assert allocator.tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None


def test_auto_changes_nothing_without_either(no_tcmalloc, monkeypatch):
    monkeypatch.setattr(allocator, "_huge_pages_enabled", lambda: False)
    assert allocator.tuned_environment({}) is None


def test_explicit_choices(fake_tcmalloc, huge_pages):
    choose = lambda name: {allocator.CHOICE_VARIABLE: name}  # noqa: E731
    assert allocator.tuned_environment(choose("system")) is None
    assert allocator.tuned_environment(choose("hugepages"))["GLIBC_TUNABLES"] == allocator.TUNABLE
    assert "LD_PRELOAD" not in allocator.tuned_environment(choose("hugepages"))
    assert allocator.tuned_environment(choose("tcmalloc"))["LD_PRELOAD"] == fake_tcmalloc
    with pytest.raises(BnasError, match="unknown allocator 'jemallc'"):
        allocator.tuned_environment(choose("jemallc"))


def test_a_choice_the_machine_cannot_honour_is_an_error(no_tcmalloc, monkeypatch):
    with pytest.raises(BnasError, match="BNAS_ALLOCATOR=tcmalloc: no tcmalloc library found"):
        allocator.tuned_environment({allocator.CHOICE_VARIABLE: "tcmalloc"})
    monkeypatch.setattr(allocator, "_glibc_supports_hugetlb", lambda: False)
    with pytest.raises(BnasError, match="glibc 2.35"):
        allocator.tuned_environment({allocator.CHOICE_VARIABLE: "hugepages"})


@pytest.mark.skipif(allocator.find_tcmalloc() is None, reason="tcmalloc is not installed")
def test_the_tuned_environment_really_loads_tcmalloc():
    env = allocator.tuned_environment({**os.environ, allocator.CHOICE_VARIABLE: "tcmalloc"})
    maps = subprocess.run([sys.executable, "-c", "print(open('/proc/self/maps').read())"],
                          env=env, capture_output=True, text=True, check=True).stdout
    assert "libtcmalloc" in maps


class Exec(Exception):
    pass


@pytest.fixture
def execs(monkeypatch, huge_pages, no_tcmalloc):
    calls = []

    def fake_execve(path, args, env):
        calls.append((path, args, env))
        raise Exec

    monkeypatch.setattr(os, "execve", fake_execve)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv(allocator.CHOICE_VARIABLE, raising=False)
    return calls


def test_program_restarts_compute_commands_with_the_tuned_allocator(execs, monkeypatch):
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


def test_a_bad_choice_is_one_line_and_exit_2(execs, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bnas", "search", "--save", "x"])
    monkeypatch.setenv(allocator.CHOICE_VARIABLE, "tcmalloc")
    assert cli.main() == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("bnas search: error: BNAS_ALLOCATOR=tcmalloc: no tcmalloc library")
    assert err.count("\n") == 1 and not execs


def test_reports_name_the_allocator(huge_pages, no_tcmalloc):
    assert allocator.describe({"LD_PRELOAD": "/usr/lib/libtcmalloc_minimal.so.4"}) == "tcmalloc"
    assert allocator.describe({"LD_PRELOAD": "libjemalloc.so.2:libx.so"}) == "jemalloc"
    assert allocator.describe(allocator.tuned_environment({})) == (
        "C library's, with transparent huge pages")
    assert allocator.describe({}) == "C library's"
