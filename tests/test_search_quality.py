"""benchmarks/search_quality.py: the protocol's aggregation (means, sample deviations, costs,
verdict) on a toy run, its resumption from cached results, and a tiny real run end to end."""
from __future__ import annotations

import importlib.util
import json
import sys
import statistics
from dataclasses import asdict
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "search_quality.py"
spec = importlib.util.spec_from_file_location("search_quality", SCRIPT)
sq = importlib.util.module_from_spec(spec)
sys.modules["search_quality"] = sq  # dataclasses look their module up
spec.loader.exec_module(sq)

TOY = sq.Protocol(search_seeds=1, random=2, train_seeds=2)


def _toy_results(p: sq.Protocol) -> list[dict]:
    """A result for every job of ``p``: top-1 of run i is 50 + i, params 1000 * (i + 1)."""
    results = []
    for i, job in enumerate(sq.plan(p)):
        record = {"id": job.id, "kind": job.kind, "seconds": 2.0, "cpu_seconds": 1.5}
        if job.kind == "train":
            record.update(group=job.group, arch=job.arch, train_seed=job.seed, top1=50.0 + i,
                          best_top1=60.0, params=1000 * (i + 1), ops=1e6 * i)
        results.append(record)
    return results


def test_plan_covers_every_group_and_seed():
    jobs = sq.plan(TOY)
    trains = [j for j in jobs if j.kind == "train"]
    assert [j.id for j in jobs[:2]] == ["search-s0", "draw"]
    assert len(trains) == (1 + 2 + 1 + 1) * 2 and len({j.id for j in jobs}) == len(jobs)
    assert {(j.group, j.arch) for j in trains} == {
        ("searched", "searched_s0"), ("random", "random_0"), ("random", "random_1"),
        ("shipped", "latest_cell_zeroise"), ("fixed", "resnet20_1w1a")}


def test_aggregation_of_a_toy_run():
    results = _toy_results(TOY)
    rows = sq.summarise(results)
    assert list(rows) == list(sq.GROUPS)
    for group, row in rows.items():
        runs = [r for r in results if r.get("group") == group]
        top1 = [r["top1"] for r in runs]
        assert row["runs"] == len(runs) == 2 * row["archs"]
        assert row["top1_mean"] == pytest.approx(statistics.mean(top1))
        assert row["top1_std"] == pytest.approx(statistics.stdev(top1))
        assert row["params"] == pytest.approx(statistics.mean(r["params"] for r in runs))
        assert row["ops"] == pytest.approx(statistics.mean(r["ops"] for r in runs))
    # searched: runs 2 and 7 (52, 57); random: 3, 4, 8, 9 (53, 54, 58, 59)
    assert rows["searched"]["top1_mean"] == 54.5 and rows["random"]["top1_mean"] == 56.0
    assert sq.verdict(rows) == ("searched does not beat random beyond the spread: -1.50 points, "
                                "spread 3.54")
    assert "| searched | 1 | 2 | 54.50 +- 3.54 |" in sq.table(rows)


@pytest.mark.parametrize("searched, random, expected", [
    ([80.0, 81.0], [70.0, 72.0, 71.0], "searched beats random: +9.50 points, more than the spread"),
    ([60.0, 61.0], [70.0, 72.0, 71.0], "random beats searched: -10.50 points"),
    ([70.0, 74.0], [70.0, 72.0, 71.0], "searched does not beat random beyond the spread"),
])
def test_verdict(searched, random, expected):
    results = [{"kind": "train", "group": g, "arch": f"{g}{i}", "top1": t, "params": 1, "ops": 1}
               for g, values in (("searched", searched), ("random", random))
               for i, t in enumerate(values)]
    assert sq.verdict(sq.summarise(results)).startswith(expected)


def test_cached_runs_are_not_redone_and_settings_are_fixed(tmp_path, capsys, monkeypatch):
    out = tmp_path / "quality"
    results = _toy_results(TOY)
    for record in results:
        sq._write_json(out / "runs" / f"{record['id']}.json", record)
    sq._write_json(out / "protocol.json", asdict(TOY))

    def never(*args):
        raise AssertionError("a cached run was redone")

    monkeypatch.setattr(sq, "run_job", never)
    args = ["--out", str(out), "--search-seeds", "1", "--random", "2"]
    assert sq.main(args) == 0
    printed = capsys.readouterr().out
    assert sq.table(sq.summarise(results)) in printed and "spread 3.54" in printed
    assert "12 runs: 0.4 min wall-clock, 0.3 CPU-min" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"]["random"]["runs"] == 4 and summary["protocol"] == asdict(TOY)
    assert (out / "table.md").read_text().startswith("| group |")
    assert sq.main([*args, "--epochs", "9"]) == 2
    assert "holds a run with other settings (epochs)" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_protocol_end_to_end_on_fashion_mnist(tmp_path, capsys):
    args = ["--out", str(tmp_path / "q"), "--threads", "1", "--image-size", "8",
            "--search-image-size", "8", "--search-seeds", "1", "--search-epochs", "1",
            "--search-subset", "128", "--search-layers", "3", "--search-channels", "4",
            "--random", "2", "--layers", "3", "--init-channels", "4", "--epochs", "1",
            "--train-subset", "128", "--val-subset", "64"]
    assert sq.main(args) == 0
    first = capsys.readouterr().out
    assert first.count("running ") == 12 and "| fixed | 1 | 2 |" in first
    summary = json.loads((tmp_path / "q" / "summary.json").read_text())
    searched = json.loads((tmp_path / "q" / "runs" / "search-s0.json").read_text())
    assert searched["genotype"]["name"] == "searched_s0"
    for run in summary["runs"]:
        if run["kind"] == "train":
            assert 0 <= run["top1"] <= 100 and run["params"] > 0
    assert sq.main(args) == 0  # everything cached: nothing runs again
    assert "running " not in capsys.readouterr().out


def test_workers_share_one_folder_through_lock_files(tmp_path, monkeypatch):
    out = tmp_path / "quality"
    runs = out / "runs"
    done = []
    monkeypatch.setattr(sq, "run_job", lambda job, p, out: done.append(job.id) or
                        next(r for r in _toy_results(TOY) if r["id"] == job.id))
    jobs = sq.plan(TOY)
    import os
    runs.mkdir(parents=True)
    (runs / "draw.lock").write_text(str(os.getppid()))  # a live process holds the draw
    (runs / "train-resnet20_1w1a-t1.lock").write_text("999999999")  # a dead one held this
    results = sq.work(jobs[::-1], TOY, out)
    assert "draw" not in done and not any(j.startswith("train-random") for j in done)
    assert done[0] == "train-resnet20_1w1a-t1" and "search-s0" in done
    assert done.index("search-s0") < done.index("train-searched_s0-t0")  # the next pass
    assert len(results) == len(jobs) - 1 - 4 and not list(runs.glob("*.lock"))[1:]
    (runs / "draw.lock").unlink()
    assert len(sq.work(jobs, TOY, out)) == len(jobs)  # the rest, then nothing held
