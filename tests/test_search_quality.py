"""benchmarks/search_quality.py: the protocol's aggregation (means, sample deviations, costs,
parameter-free shares, alpha ranges, verdicts) on a toy run, search variants (parsing, their jobs,
adding one to a finished run), resumption from cached results, and a tiny real run end to end."""
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
PC4 = {"pc4": {"partial_channels": 4}}


def _toy_genotype(name: str, pools: int, spread: float) -> dict:
    """A cell genotype whose normal cell has ``pools`` max-pooling edges (of 8, the rest binary
    3x3 convolutions) and whose alpha rows all range over ``2 * spread``."""
    ops = ["max_pool_3x3"] * pools + ["bin_conv_3x3"] * (8 - pools)
    normal = {"nodes": [[[ops[2 * i], 0], [ops[2 * i + 1], 1]] for i in range(4)],
              "concat": [2, 3, 4, 5]}
    reduce = {"nodes": [[["bin_conv_3x3", 0], ["bin_conv_3x3", 1]]] * 4, "concat": [2, 3, 4, 5]}
    rows = [[-spread, 0.0, spread]] * 14
    return {"format": 1, "name": name, "kind": "cell", "space": "bnas", "normal": normal,
            "reduce": reduce, "provenance": {"alphas": {"normal": rows, "reduce": rows}}}


def _toy_results(p: sq.Protocol, variants: dict | None = None) -> list[dict]:
    """A result for every job of ``p``: top-1 of run i is 50 + i, params 1000 * (i + 1); the
    searched genotypes have 2 pooling edges (alpha spread 0.1), the variant's 6 (spread 0.3),
    random_i has i + 1 (searches record no alphas for them)."""
    results = []
    for i, job in enumerate(sq.plan(p, variants)):
        record = {"id": job.id, "kind": job.kind, "seconds": 2.0, "cpu_seconds": 1.5}
        if job.kind == "search":
            variant = job.group != "searched"
            record["genotype"] = _toy_genotype(job.arch, 6 if variant else 2,
                                               0.3 if variant else 0.1)
        elif job.kind == "draw":
            record["genotypes"] = [_toy_genotype(f"random_{k}", k + 1, 0.0)
                                   for k in range(p.random)]
        else:
            record.update(group=job.group, arch=job.arch, train_seed=job.seed, top1=50.0 + i,
                          best_top1=60.0, params=1000 * (i + 1), ops=1e6 * i)
        results.append(record)
    return results


def _save_genotypes(record: dict, out: Path) -> None:
    """Write the genotypes a search or draw record holds, as the protocol's runs do."""
    for genotype in record.get("genotypes", [record.get("genotype")]):
        if genotype:
            sq._write_json(out / "genotypes" / f"{genotype['name']}.json", genotype)


def _cache(results: list[dict], out: Path) -> None:
    """Write ``results`` and their genotypes as a protocol run would."""
    for record in results:
        sq._write_json(out / "runs" / f"{record['id']}.json", record)
        _save_genotypes(record, out)


def test_plan_covers_every_group_and_seed():
    jobs = sq.plan(TOY)
    trains = [j for j in jobs if j.kind == "train"]
    assert [j.id for j in jobs[:2]] == ["search-s0", "draw"]
    assert len(trains) == (1 + 2 + 1 + 1) * 2 and len({j.id for j in jobs}) == len(jobs)
    assert {(j.group, j.arch) for j in trains} == {
        ("searched", "searched_s0"), ("random", "random_0"), ("random", "random_1"),
        ("shipped", "latest_cell_zeroise"), ("fixed", "resnet20_1w1a")}
    assert {j.needs for j in trains} == {"search-s0", "draw", None}


def test_a_variant_adds_its_jobs_and_leaves_the_others_as_they_were():
    base, jobs = sq.plan(TOY), sq.plan(TOY, PC4)
    assert set(base) < set(jobs)  # same ids, groups, needs: their cached results stay valid
    added = [j for j in jobs if j not in base]
    assert [(j.id, j.group, j.arch, j.search) for j in added if j.kind == "search"] == [
        ("search-pc4-s0", "searched+pc4", "searched-pc4_s0", (("partial_channels", 4),))]
    assert [(j.id, j.needs) for j in added if j.kind == "train"] == [
        ("train-searched-pc4_s0-t0", "search-pc4-s0"), ("train-searched-pc4_s0-t1",
                                                        "search-pc4-s0")]
    config = sq.search_config(added[0], TOY, Path("/tmp/q"))
    assert (config.partial_channels, config.save, config.seed, config.layers) == (
        4, "searched-pc4_s0", 0, TOY.search_layers)


@pytest.mark.parametrize("text, expected", [
    ("warmup=arch_warmup:1", ("warmup", {"arch_warmup": 1})),
    ("cap-2=max-param-free:2,arch_lr:0.001", ("cap-2", {"max_param_free": 2, "arch_lr": 1e-3})),
])
def test_variant_parsing(text, expected):
    assert sq.parse_variant(text) == expected


@pytest.mark.parametrize("text, message", [
    ("warmup", "expected NAME=KEY:VALUE"),
    ("Warm=arch_warmup:1", "NAME in lower-case letters"),
    ("w=arch_warmup", "expected KEY:VALUE items"),
    ("w=arch_warmup:1,arch_warmup:2", "each key once"),
    ("w=seed:3", "'seed' is not a search setting a variant may change"),
    ("w=colour:3", "'colour' is not a search setting"),
    ("w=arch_warmup:[1", "cannot read the value"),
])
def test_bad_variants_are_refused(text, message):
    from bnas.errors import BnasError

    with pytest.raises(BnasError, match=message.replace("[", r"\[")):
        sq.parse_variant(text)


def test_aggregation_of_a_toy_run(tmp_path):
    results = _toy_results(TOY)
    _cache(results, tmp_path)
    sq.describe(results, tmp_path)
    rows = sq.summarise(results)
    assert list(rows) == ["searched", "random", "shipped", "fixed"]
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
    # parameter-free normal edges: searched 2 of 8; random_0 1, random_1 2; BNAS-A's normal
    # cell 6 zeroise of 8; the ResNet has no cells. Alpha ranges: searched rows span 0.2.
    assert [rows[g]["param_free"] for g in rows] == [2 / 8, 1.5 / 8, 6 / 8, None]
    assert rows["searched"]["alpha_range"] == pytest.approx(0.2)
    assert [rows[g]["alpha_range"] for g in ("random", "shipped", "fixed")] == [None] * 3
    assert sq.table(rows).splitlines()[-1].endswith("| 9,500 | 8.50 M | - | - |")  # fixed
    assert "| random | 2 | 4 | 56.00 +- 2.94 | 7,000 | 6.00 M | 19 | - |" in sq.table(rows)
    assert "| searched | 1 | 2 | 54.50 +- 3.54 | 5,500 | 4.50 M | 25 | 0.200 |" in sq.table(rows)


def test_aggregation_of_a_toy_run_with_a_variant(tmp_path):
    results = _toy_results(TOY, PC4)
    _cache(results, tmp_path)
    sq.describe(results, tmp_path)
    rows = sq.summarise(results)
    assert list(rows) == ["searched", "random", "shipped", "fixed", "searched+pc4"]
    # plan: search-s0, draw, per seed searched, random x2, shipped, fixed, then search-pc4-s0
    # and its two retrainings: searched runs 2 and 7 (52, 57), random 3, 4, 8, 9 (53, 54, 58,
    # 59: mean 56, std sqrt(26 / 3) = 2.94), the variant's 13 and 14 (63, 64)
    pc4 = rows["searched+pc4"]
    assert (pc4["runs"], pc4["top1_mean"], pc4["param_free"]) == (2, 63.5, 6 / 8)
    assert pc4["alpha_range"] == pytest.approx(0.6)
    assert rows["random"]["top1_std"] == pytest.approx((26 / 3) ** 0.5)
    assert sq.verdict(rows).splitlines() == [
        "searched does not beat random beyond the spread: -1.50 points, spread 3.54",
        "searched+pc4 beats random: +7.50 points, more than the spread (2.94)",
        "searched+pc4 beats searched: +9.00 points, more than the spread (3.54)"]
    assert "| searched+pc4 | 1 | 2 | 63.50 +- 0.71 |" in sq.table(rows)


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
    _cache(results, out)
    sq._write_json(out / "protocol.json", asdict(TOY))

    def never(*args):
        raise AssertionError("a cached run was redone")

    monkeypatch.setattr(sq, "run_job", never)
    args = ["--out", str(out), "--search-seeds", "1", "--random", "2"]
    assert sq.main(args) == 0
    printed = capsys.readouterr().out
    sq.describe(results, out)
    assert sq.table(sq.summarise(results)) in printed and "spread 3.54" in printed
    assert "12 runs: 0.4 min wall-clock, 0.3 CPU-min" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"]["random"]["runs"] == 4 and summary["protocol"] == asdict(TOY)
    assert (out / "table.md").read_text().startswith("| group |")
    assert sq.main([*args, "--epochs", "9"]) == 2
    assert "holds a run with other settings (epochs)" in capsys.readouterr().err


def test_a_variant_added_to_a_finished_run_runs_only_its_own_jobs(tmp_path, capsys, monkeypatch):
    out = tmp_path / "quality"
    _cache(_toy_results(TOY), out)
    sq._write_json(out / "protocol.json", asdict(TOY))
    done = []

    def run(job, p, out):
        done.append(job.id)
        record = next(r for r in _toy_results(TOY, PC4) if r["id"] == job.id)
        _save_genotypes(record, out)
        return record

    monkeypatch.setattr(sq, "run_job", run)
    args = ["--out", str(out), "--search-seeds", "1", "--random", "2"]
    assert sq.main([*args, "--variant", "pc4=partial-channels:4"]) == 0
    assert done == ["search-pc4-s0", "train-searched-pc4_s0-t0", "train-searched-pc4_s0-t1"]
    assert json.loads((out / "protocol.json").read_text()) == asdict(TOY)
    assert json.loads((out / "variants.json").read_text()) == PC4
    assert "| searched+pc4 | 1 | 2 | 63.50 +- 0.71 |" in capsys.readouterr().out
    assert sq.main(args) == 0 and len(done) == 3  # the saved variant stays part of the run
    assert "searched+pc4" in json.loads((out / "summary.json").read_text())["groups"]
    assert sq.main([*args, "--variant", "pc4=partial_channels:2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--variant pc4: " in err and "give another name" in err
    assert sq.main([*args, "--variant", "pc3=partial_channels:3"]) == 2
    assert "--variant pc3: --partial-channels must be" in capsys.readouterr().err
    assert json.loads((out / "variants.json").read_text()) == PC4


@pytest.mark.slow
def test_tiny_protocol_end_to_end_on_fashion_mnist(tmp_path, capsys):
    args = ["--out", str(tmp_path / "q"), "--threads", "1", "--image-size", "8",
            "--search-image-size", "8", "--search-seeds", "1", "--search-epochs", "1",
            "--search-subset", "128", "--search-layers", "3", "--search-channels", "4",
            "--random", "2", "--layers", "3", "--init-channels", "4", "--epochs", "1",
            "--train-subset", "128", "--val-subset", "64", "--variant", "pc2=partial_channels:2"]
    assert sq.main(args) == 0
    first = capsys.readouterr().out
    assert first.count("running ") == 15 and "| fixed | 1 | 2 |" in first
    assert "| searched+pc2 | 1 | 2 |" in first
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
