"""The cache of built C++ libraries (bnas.ops.cxx): builds of one source are kept by most recent
use, up to KEEP, and nothing else in the cache is touched."""
import os

import pytest

from bnas.ops import cxx


def fake_builds(directory, stem, count, start=1_000_000):
    """``count`` files named like builds of ``stem``, the i-th used at time start + i."""
    paths = []
    for i in range(count):
        path = directory / f"{stem}-{i:0{cxx.KEY_DIGITS}x}.so"
        path.write_bytes(b"")
        os.utime(path, (start + i, start + i))
        paths.append(path)
    return paths


def test_prune_keeps_the_most_recently_used_builds_of_its_source_only(tmp_path):
    builds = fake_builds(tmp_path, "xnor", 6)
    others = fake_builds(tmp_path, "sign_bn", 6) + [tmp_path / "xnor-notahash.so",
                                                    tmp_path / "tmpab12cd.so",
                                                    tmp_path / "xnor-0000000000000000.so.bak"]
    for path in others[6:]:
        path.write_bytes(b"")
    os.utime(builds[0], (2_000_000, 2_000_000))  # the oldest build, used last
    deleted = cxx.prune(tmp_path, "xnor", keep=3)
    assert sorted(deleted) == sorted(builds[1:4])
    assert set(tmp_path.iterdir()) == {builds[0], *builds[4:], *others}


@pytest.mark.skipif(cxx.compiler() is None, reason="no C++ compiler")
def test_a_new_build_prunes_and_a_used_one_is_marked_recent(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("BNAS_CACHE_DIR", str(cache))
    cache.mkdir()
    stale = fake_builds(cache, "probe", cxx.KEEP + 2)
    source = tmp_path / "probe.cpp"
    source.write_text('extern "C" int probe() { return 7; }\n')
    flags = ["-O1", "-fPIC", "-shared"]
    built = cxx.build(source, cxx.compiler(), flags)
    assert cxx.load(built, {}).probe() == 7
    assert set(cache.iterdir()) == {built, *stale[-(cxx.KEEP - 1):]}
    os.utime(built, (1, 1))
    assert cxx.build(source, cxx.compiler(), flags) == built  # served from the cache
    assert built.stat().st_mtime > stale[-1].stat().st_mtime  # and marked as just used
