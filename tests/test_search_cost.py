"""Search for cost: the expected cost, its gradient and the budget penalties against values
worked out by hand; one-hot architectures against bnas show's counts; the pull of the weight;
budgets and bad input."""
import json
import math
from pathlib import Path

import pytest
import torch

from bnas import genotype as G
from bnas.binarize import get as get_binarizer
from bnas.cli import main
from bnas.errors import BnasError
from bnas.ops import SPACES
from bnas.search.cost import (COST_KINDS, CostModel, CostObjective, RetrainSize, parse_target,
                              parse_weights)

OPS3 = ("zeroise", "max_pool_3x3", "bin_conv_3x3")


def hand_model(fixed=10.0):
    """One intermediate node (two edges: rows 0 and 1), three operations; two normal cells and
    one reduction cell, with costs chosen by hand."""
    normal1 = torch.tensor([[0.0, 2.0, 8.0], [0.0, 1.0, 5.0]], dtype=torch.float64)
    normal2 = torch.tensor([[0.0, 0.0, 4.0], [0.0, 3.0, 1.0]], dtype=torch.float64)
    reduce1 = torch.tensor([[0.0, 6.0, 2.0], [0.0, 0.0, 10.0]], dtype=torch.float64)
    return CostModel(COST_KINDS.get("ops"), OPS3, 1, RetrainSize("digits", 3, 4, 8), fixed,
                     [("normal", normal1), ("reduce", reduce1), ("normal", normal2)])


def hand_alphas():
    # softmax rows: [1/4, 1/4, 1/2], [3/5, 1/5, 1/5]; reduce [1/3, 1/3, 1/3], [1/2, 1/4, 1/4]
    normal = torch.tensor([[0.0, 0.0, math.log(2)], [math.log(3), 0.0, 0.0]], dtype=torch.float64)
    reduce = torch.tensor([[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0]], dtype=torch.float64)
    return [normal.requires_grad_(), reduce.requires_grad_()]


# summed normal table: [[0, 2, 12], [0, 4, 6]]; reduce: [[0, 6, 2], [0, 0, 10]]
EXPECTED = 10 + (2 / 4 + 12 / 2) + (4 / 5 + 6 / 5) + (6 / 3 + 2 / 3) + (10 / 4)  # 23.6666...
# dC/dalpha_k = p_k (c_k - sum_j p_j c_j), row by row
GRAD_NORMAL = [[0.25 * (0 - 6.5), 0.25 * (2 - 6.5), 0.5 * (12 - 6.5)],
               [0.6 * (0 - 2.0), 0.2 * (4 - 2.0), 0.2 * (6 - 2.0)]]
GRAD_REDUCE = [[(0 - 8 / 3) / 3, (6 - 8 / 3) / 3, (2 - 8 / 3) / 3],
               [0.5 * (0 - 2.5), 0.25 * (0 - 2.5), 0.25 * (10 - 2.5)]]
# the dearest one-hot architecture: each row's largest entry of the summed tables (the two
# normal cells share their alphas, so the per-cell maxima 8 + 4, 5 + 3 are not reachable)
MAXIMUM = 10 + (12 + 6) + (6 + 10)


def test_expected_cost_and_its_gradient_by_hand():
    model, alphas = hand_model(), hand_alphas()
    cost = model.expected(alphas)
    assert cost.item() == pytest.approx(EXPECTED, rel=1e-12)
    cost.backward()
    torch.testing.assert_close(alphas[0].grad, torch.tensor(GRAD_NORMAL, dtype=torch.float64))
    torch.testing.assert_close(alphas[1].grad, torch.tensor(GRAD_REDUCE, dtype=torch.float64))
    assert model.maximum == MAXIMUM == 44


def test_weighted_term_divides_by_the_dearest_one_hot_architecture():
    alphas = hand_alphas()
    term = CostObjective(hand_model(), 0.3)(alphas)
    assert term.item() == pytest.approx(0.3 * EXPECTED / 44, rel=1e-12)
    term.backward()
    torch.testing.assert_close(alphas[0].grad,
                               0.3 / 44 * torch.tensor(GRAD_NORMAL, dtype=torch.float64))


@pytest.mark.parametrize("penalty, target, value, slope", [
    ("hinge", 20.0, EXPECTED / 20 - 1, 1 / 20),               # over budget: (r - 1)
    ("hinge", 30.0, 0.0, 0.0),                                # within budget: nothing
    ("log", 20.0, math.log(EXPECTED / 20), 1 / EXPECTED),     # d log(C/T) / dC = 1 / C
    ("log", 30.0, 0.0, 0.0),
    ("absolute", 30.0, 1 - EXPECTED / 30, -1 / 30),           # under budget: pulled up
])
def test_budget_penalties_by_hand(penalty, target, value, slope):
    alphas = hand_alphas()
    objective = CostObjective(hand_model(), 2.0, parse_target(f"{target}"), penalty)
    term = objective(alphas)
    assert term.item() == pytest.approx(2.0 * value, rel=1e-12, abs=1e-15)
    term.backward()
    torch.testing.assert_close(alphas[1].grad,
                               2.0 * slope * torch.tensor(GRAD_REDUCE, dtype=torch.float64))


def one_hot_alphas(genotype, op_names, steps):
    """Alphas whose softmax is (to 1e-21) the genotype: its edges' ops, zeroise elsewhere."""
    from bnas.search.topology import edges

    rows = {edge: row for row, edge in enumerate(edges(steps))}
    alphas = []
    for cell in (genotype.normal, genotype.reduce):
        alpha = torch.zeros(len(rows), len(op_names), dtype=torch.float64)
        alpha[:, op_names.index("zeroise")] = 50.0
        for node, op, j in cell.edges:
            alpha[rows[(node, j)]] = 0.0
            alpha[rows[(node, j)], op_names.index(op)] = 50.0
        alphas.append(alpha)
    return alphas


@pytest.mark.parametrize("kind", ["ops", "bops", "flops"])
def test_one_hot_architecture_costs_what_bnas_show_counts(kind, capsys):
    genotype = G.load("latest_cell_zeroise")
    op_names = SPACES.get("bnas")
    size = RetrainSize.of("digits", 5, 8)
    model = CostModel.build(kind, op_names, 4, "bnas", size, get_binarizer("plain"))
    assert main(["show", "latest_cell_zeroise", "--dataset", "digits", "--layers", "5",
                 "--init-channels", "8", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)[kind]
    assert model.of_genotype(genotype) == pytest.approx(shown, rel=1e-12)
    expected = model.expected(one_hot_alphas(genotype, op_names, 4)).item()
    assert expected == pytest.approx(shown, rel=1e-12)
    if kind != "flops":  # binary operations cost no FLOPs: the edges cost nothing in that kind
        assert model.fixed < shown < model.maximum


def test_fixed_part_is_the_network_without_its_edges():
    """A network whose every edge is a pooling (no counted layer) costs exactly C_fixed."""
    from bnas.genotype import Cell, Genotype
    from bnas.model import build_model
    from bnas.profiling import profile

    nodes = tuple((("max_pool_3x3", 0), ("avg_pool_3x3", 1)) for _ in range(4))
    cell = Cell(nodes, (2, 3, 4, 5))
    pools = Genotype(name="pools", kind="cell", normal=cell, reduce=cell, space="bnas")
    size = RetrainSize.of("cifar10", 4, 6, 16)
    model = CostModel.build("bops", SPACES.get("bnas"), 4, "bnas", size, get_binarizer("plain"))
    built = build_model(pools, dataset="cifar10", layers=4, init_channels=6)
    assert model.fixed == profile(built, (3, 16, 16)).bops == model.of_genotype(pools)


def digits_batches(n_batches, batch=16, seed=0):
    from bnas.data import build_dataset

    data = build_dataset("digits", "train", augment=False, image_size=8)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=gen)
    for b in range(n_batches):
        items = [data[int(i)] for i in order[b * batch:(b + 1) * batch]]
        yield torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def test_larger_weight_finds_cheaper_genotypes_on_digits():
    """Fast representative of the search: architecture steps of a small supernet on digits,
    same seed and batches for every weight; the derived genotype's cost falls as W grows."""
    from bnas.search.architect import Architect
    from bnas.search.derive import derive
    from bnas.search.network import SearchNetwork

    batches = list(digits_batches(4))
    costs = []
    cost_model = None
    for weight in (0.0, 0.3, 3.0):
        torch.manual_seed(0)
        net = SearchNetwork(10, c=4, layers=3)
        if cost_model is None:
            cost_model = CostModel.build("ops", net.op_names, net.steps, "bnas",
                                         RetrainSize.of("digits", 5, 8, 8), net.binarizer)
        architect = Architect(net, lr=0.05, cost=CostObjective(cost_model, weight))
        for epoch in range(3):
            for x, y in batches:
                architect.step(x, y, epoch)
        genotype = derive(net.edge_weights(), net.op_names, net.steps, "bnas")
        costs.append(cost_model.of_genotype(genotype))
    assert costs[0] > costs[1] > costs[2] >= cost_model.fixed


@pytest.mark.parametrize("text, value, time", [
    ("100M", 1e8, False), ("1.2G", 1.2e9, False), ("250k", 2.5e5, False), ("3e8", 3e8, False),
    ("5ms", 5e-3, True), ("5 ms", 5e-3, True), ("800us", 8e-4, True), ("0.01s", 0.01, True)])
def test_budgets_parse(text, value, time):
    target = parse_target(text)
    assert target.value == pytest.approx(value, rel=1e-12) and target.time is time


@pytest.mark.parametrize("text", ["", "M", "5 parsecs", "-3M", "0ms", "1..2G", "fast"])
def test_unreadable_budgets_are_refused(text):
    with pytest.raises(BnasError):
        parse_target(text)


def test_weights_parse_one_or_a_sweep():
    assert parse_weights("0.1") == [0.1]
    assert parse_weights("0,0.01,0.1,1") == [0.0, 0.01, 0.1, 1.0]
    for bad in ("-1", "0,-0.1", "x", "inf", "nan", "0,,1"):
        with pytest.raises(BnasError):
            parse_weights(bad)


TINY = ["search", "--dataset", "digits", "--save", "x", "--device", "cpu"]


@pytest.mark.parametrize("extra, words", [
    (["--cost", "joules", "--cost-weight", "1"], "unknown cost kind 'joules'"),
    (["--cost", "ops", "--cost-weight", "-0.5"], "--cost-weight must be a number >= 0"),
    (["--cost", "ops", "--cost-weight", "much"], "is not a number"),
    (["--cost", "ops"], "give --cost-weight"),
    (["--cost-weight", "1"], "--cost-weight needs --cost KIND"),
    (["--cost", "ops", "--cost-weight", "1", "--cost-target", "lots"], "cannot read --cost-target"),
    (["--cost", "ops", "--cost-weight", "1", "--cost-target", "5ms"], "needs --cost latency"),
    (["--cost", "ops", "--cost-weight", "1", "--cost-penalty", "log"], "give one"),
    (["--cost", "ops", "--cost-weight", "1", "--cost-target", "1M", "--cost-penalty", "cubic"],
     "unknown cost penalty 'cubic'"),
    (["--cost", "ops", "--cost-weight", "1", "--cost-layers", "2"], "--cost-layers must be at least 3"),
])
def test_bad_cost_settings_are_one_line_exit_2(extra, words, capsys, tmp_path):
    assert main([*TINY, "--out", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_latency_without_a_usable_engine_is_one_line_exit_2(capsys, tmp_path, monkeypatch):
    import bnas.deploy.kernels

    def unavailable():
        raise BnasError("the packed engine's kernels are off (no C++ compiler: set CXX or "
                        "install g++)")

    monkeypatch.setattr(bnas.deploy.kernels, "kernels", unavailable)
    assert main([*TINY, "--out", str(tmp_path / "run"), "--cost", "latency", "--cost-weight", "1",
                 "--cost-target", "5 ms"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bnas search: error: --cost latency needs the packed engine")
    assert "\n" not in err and not (tmp_path / "run").exists()


def test_flops_of_an_all_binary_space_cannot_steer_the_search():
    model = CostModel.build("flops", SPACES.get("bnas"), 4, "bnas", RetrainSize.of("digits", 3, 4, 8),
                            get_binarizer("plain"))
    CostObjective(model, 0.0)  # recording the cost is fine
    with pytest.raises(BnasError, match="cannot tell architectures apart"):
        CostObjective(model, 1.0)


def test_search_records_the_cost_setting_and_the_genotypes_cost(tmp_path, capsys):
    folder = tmp_path / "g"
    args = [*TINY[:-4], "--save", "cheap", "--device", "cpu", "--layers", "3",
            "--init-channels", "4", "--epochs", "1", "--subset", "64", "--batch-size", "32",
            "--no-progress", "--genotype-dir", str(folder), "--out", str(tmp_path / "run"),
            "--cost", "bops", "--cost-weight", "0.5", "--cost-target", "2M",
            "--cost-layers", "5", "--cost-init-channels", "8", "--cost-image-size", "16"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    found = G.load(folder / "cheap.json")
    cost = found.provenance["cost"]
    assert {k: cost[k] for k in ("kind", "unit", "weight", "target", "target_value", "penalty")} == {
        "kind": "bops", "unit": "BOPs", "weight": 0.5, "target": "2M", "target_value": 2e6,
        "penalty": "hinge"}
    assert cost["size"] == {"dataset": "digits", "layers": 5, "init_channels": 8, "image_size": 16}
    assert main(["show", str(folder / "cheap.json"), "--dataset", "digits", "--layers", "5",
                 "--init-channels", "8", "--json"]) == 0
    capsys.readouterr()
    from bnas.model import build_model
    from bnas.profiling import profile

    built = build_model(found, dataset="digits", layers=5, init_channels=8)
    assert cost["genotype_cost"] == profile(built, (3, 16, 16)).bops == cost["counts"]["bops"]
    assert cost["counts"]["params"] == profile(built, (3, 16, 16)).params
    assert cost["meets_target"] is (cost["genotype_cost"] <= 2e6)
    verdict = "within" if cost["meets_target"] else "over"
    assert f"it costs {COST_KINDS.get('bops').format(cost['genotype_cost'])} ({verdict} the " \
           f"budget 2M)" in printed
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "cost bops: weight 0.5 x hinge(C / 2.00 M BOPs)" in log and "genotype costs" in log


# -- the Pareto sweep ----------------------------------------------------------------------------
def test_pareto_front_keeps_the_undominated_points():
    from bnas.search.pareto import Point, pareto_front

    points = [Point("a", "s", 10, 90), Point("b", "s", 20, 95), Point("c", "s", 15, 89),
              Point("d", "s", 20, 94), Point("e", "s", 5, 80), Point("f", "s", 5, 80)]
    assert [p.name for p in pareto_front(points)] == ["e", "f", "a", "b"]


def test_front_files(tmp_path):
    from bnas.search.pareto import Point, pareto_front, write_front

    kind = COST_KINDS.get("ops")
    points = [Point("sw_w0", "searched, weight 0", 2.0e6, 91.5, 0.0, "/x/sw_w0.json"),
              Point("sw_w1", "searched, weight 1", 1.0e6, 90.0, 1.0, "/x/sw_w1.json"),
              Point("latest_cell", "shipped cell", 3.0e6, 91.0, genotype="latest_cell"),
              Point("resnet20_1w1a", "fixed network", 0.5e6, 85.0, genotype="resnet20_1w1a")]
    for p in pareto_front(points):
        p.front = True
    write_front(tmp_path, points, "ops", kind.format, RetrainSize.of("digits", 5, 8, 16),
                parse_target("1.5M"), {"epochs": 5})
    lines = (tmp_path / "front.md").read_text().splitlines()
    assert lines[0].startswith("Accuracy against ops (digits; cells counted and retrained at 5 "
                               "cells, C=8, 16x16; retraining: epochs=5)")
    assert lines[4] == "| `resnet20_1w1a` | fixed network | 500.00 K OPs | 85.00 | yes | yes |"
    assert lines[7] == "| `latest_cell` | shipped cell | 3.00 M OPs | 91.00 |  | no |"
    saved = json.loads((tmp_path / "front.json").read_text())
    assert [p["front"] for p in saved["points"]] == [True, True, False, True]
    assert saved["target"] == "1.5M"
    assert (tmp_path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_options_need_a_sweep(capsys, tmp_path):
    assert main([*TINY, "--cost", "ops", "--cost-weight", "1", "--front-compare", "latest_cell",
                 "--out", str(tmp_path / "r")]) == 2
    assert "give several --cost-weight values" in capsys.readouterr().err
    assert main([*TINY, "--cost", "ops", "--cost-weight", "0,1", "--front-compare", "nonesuch",
                 "--out", str(tmp_path / "r")]) == 2
    assert "unknown architecture 'nonesuch'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_sweep_on_digits_writes_the_front_and_costs_fall(tmp_path, capsys):
    """Searches for three weights (same seed) and their retrainings; the genotypes' costs do not
    rise as the weight grows (and fall overall), and every point's cost is bnas show's count."""
    out = tmp_path / "front"
    args = [*TINY[:-4], "--save", "sw", "--device", "cpu", "--layers", "3", "--init-channels", "4",
            "--epochs", "1", "--subset", "256", "--batch-size", "32", "--no-progress",
            "--arch-lr", "0.05", "--out", str(out), "--cost", "ops", "--cost-weight", "0,1,100",
            "--cost-layers", "5", "--cost-init-channels", "8", "--cost-image-size", "16",
            "--front-compare", "resnet20_1w1a", "--front-train", "epochs=1",
            "--front-train", "train_subset=128", "--front-train", "val_subset=128"]
    assert main(args) == 0
    assert "Pareto front" in capsys.readouterr().out
    saved = json.loads((out / "front.json").read_text())
    searched = [p for p in saved["points"] if p["weight"] is not None]
    costs = [p["cost"] for p in searched]
    assert costs[0] >= costs[1] >= costs[2] and costs[0] > costs[2]  # one epoch: no best-epoch pick
    from bnas.model import build_model
    from bnas.profiling import profile

    for p in saved["points"]:
        sized = {"layers": 5, "init_channels": 8} if p["weight"] is not None else {}
        assert p["cost"] == profile(build_model(p["genotype"], dataset="digits", **sized),
                                    (3, 16, 16)).ops
    assert (out / "front.png").is_file() and "| `resnet20_1w1a` |" in (out / "front.md").read_text()


# -- tuning for accuracy and cost ----------------------------------------------------------------
def test_tune_search_mode_with_a_cost_is_a_two_objective_study(tmp_path, capsys):
    import optuna

    rc = main(["tune", "--mode", "search", "--dataset", "digits", "--layers", "3",
               "--init-channels", "4", "--image-size", "8", "--batch-size", "32",
               "--train-subset", "32", "--val-subset", "32", "--workers", "0", "--epochs", "1",
               "--trials", "2", "--search-arg", "epochs=1", "--search-arg", "subset=32",
               "--search-arg", "layers=3", "--search-arg", "init_channels=4",
               "--search-arg", "batch_size=16", "--search-arg", "cost=bops",
               "--param", "cost_weight=0.01:10:log", "--sampler", "random",
               "--study", "costly", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="costly", storage=f"sqlite:///{tmp_path / 'tune.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    trials = study.get_trials()
    assert len(trials) == 2 and all(len(t.values) == 2 for t in trials)
    assert {"cost_weight", "lam", "tau", "arch_lr"} == set(trials[0].params)
    from bnas.model import build_model
    from bnas.profiling import profile

    for t in trials:  # the cost is the found genotype's, at the size the trial retrained
        found = G.load(t.user_attrs["genotype"])
        assert found.provenance["cost"]["weight"] == t.params["cost_weight"]
        built = build_model(found, dataset="digits", layers=3, init_channels=4)
        assert t.values[1] == profile(built, (3, 8, 8)).bops
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert summary[1].split()[:5] == ["trial", "state", "top1", "cost", "front"]
    assert "Pareto front (top-1 up, cost down): trials" in (tmp_path / "best.yaml").read_text()
    assert (tmp_path / "pareto.png").is_file() and "pareto plot:" in out


# -- latency -------------------------------------------------------------------------------------
def test_latency_table_entries_are_positive_and_ordered_by_kernel(tmp_path, monkeypatch):
    pytest.importorskip("bnas.deploy.bench", reason="the packed engine's timing is not here")
    from bnas.search.latency import build_table, engine

    engine()  # the packed engine runs here (its kernels build with g++)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    table = build_table("bnas", RetrainSize.of("cifar10", 3, 16, 16), steps=1)
    assert table.path.parent == tmp_path / "bnas" / "latency" and table.path.is_file()
    # one node (edges from the cell inputs only): normal C=16 at 16x16, reductions C=32 at
    # 16x16 and C=64 at 8x8, both strided: three shapes, six priced operations each
    assert len(table.entries) == 3 * 6 and all(t > 0 for t in table.entries.values())
    on_disk = json.loads(table.path.read_text())
    assert on_disk["entries"] == table.entries and on_disk["threads"] == torch.get_num_threads()
    # where the convolution outweighs the packing (C=256, 16x16: about 1.9x on the 2-core test
    # machine), a 5x5 kernel takes longer than a 3x3 one, dilated or not
    shape = (256, 16, 16)
    for small, large in (("bin_conv_3x3", "bin_conv_5x5"), ("bin_dil_conv_3x3", "bin_dil_conv_5x5")):
        assert table.get(large, shape, 1, "plain") > table.get(small, shape, 1, "plain")
    assert table.key("bin_conv_5x5", shape, 1, "plain") in json.loads(table.path.read_text())["entries"]
    # entries are kept (a later search reuses them) until regenerated
    tiny = RetrainSize.of("cifar10", 3, 4, 8)
    first = build_table("bnas", tiny, steps=1)
    on_disk = json.loads(first.path.read_text())
    table.path.write_text(json.dumps({**on_disk, "entries": {k: -1.0 for k in on_disk["entries"]}}))
    COST_KINDS.get("latency")._tables.clear()
    assert set(build_table("bnas", tiny, steps=1).entries.values()) == {-1.0}
    again = build_table("bnas", tiny, steps=1, regenerate=True)
    # the table now holds what this size needs, measured afresh (the earlier entries are gone)
    assert len(again.entries) == 3 * 6 and set(again.entries) < set(first.entries)
    assert min(again.entries.values()) > 0


def test_bench_table_command_and_a_latency_search(tmp_path, monkeypatch, capsys):
    pytest.importorskip("bnas.deploy.bench", reason="the packed engine's timing is not here")
    from bnas.search.latency import engine

    engine()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    table = ["--table", "dataset=digits", "layers=3", "init_channels=4", "image_size=8",
             "steps=1", "threads=1"]
    assert main(["bench", *table, "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["threads"] == 1 and made["layers"] == 3 and len(made["entries"]) == 3 * 6
    assert made["path"].startswith(str(tmp_path / "cache" / "bnas" / "latency"))
    assert made["path"].endswith("-1threads.json") and min(made["entries"].values()) > 0
    for bad, words in ((["--table", "layers=0"], "--table layers must be at least 1"),
                       (["--table", "depth=3"], "KEY one of space, dataset"),
                       (["latest_cell", "--table", "layers=3"], "drop the architecture"),
                       (["latest_cell", "--regenerate"], "--regenerate goes with --table")):
        assert main(["bench", *bad]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1
    # a search for latency prices its edges from that table and reports the budget
    torch.set_num_threads(1)
    args = [*TINY[:-4], "--save", "quick", "--device", "cpu", "--layers", "3", "--init-channels",
            "4", "--epochs", "1", "--subset", "64", "--batch-size", "32", "--no-progress",
            "--genotype-dir", str(tmp_path / "g"), "--out", str(tmp_path / "run"), "--cost",
            "latency", "--cost-weight", "1", "--cost-target", "50 ms", "--cost-layers", "3",
            "--cost-init-channels", "4", "--cost-image-size", "8", "--steps", "1"]
    assert main(args) == 0
    cost = G.load(tmp_path / "g" / "quick.json").provenance["cost"]
    assert cost["kind"] == "latency" and cost["unit"] == "s" and cost["target_value"] == 0.05
    assert 0 < cost["fixed"] < cost["genotype_cost"] <= cost["max_cost"]
    assert cost["meets_target"] is (cost["genotype_cost"] <= 0.05)
    assert "bin_conv_3x3 c4 8x8 s1 plain" in json.loads(Path(made["path"]).read_text())["entries"]


def test_cost_gradient_adds_to_both_orders_of_the_architecture_step():
    """The cost term depends on the alphas alone: first- and second-order steps differ from the
    same steps without it by exactly its gradient."""
    from bnas.search.architect import Architect
    from bnas.search.network import SearchNetwork

    torch.manual_seed(0)
    net = SearchNetwork(4, c=4, layers=3).double()
    with torch.no_grad():
        for alpha in net.arch_parameters():
            alpha.normal_()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    term = CostObjective(CostModel.build("ops", net.op_names, 4, "bnas",
                                         RetrainSize.of("digits", 3, 4, 8), net.binarizer), 0.7)
    alphas = [a.detach().clone().requires_grad_() for a in net.arch_parameters()]
    expected = torch.autograd.grad(term(alphas), alphas)
    weights = torch.optim.SGD(net.weight_parameters(), lr=0.05, momentum=0.9)
    for order in (1, 2):
        plain, costly = Architect(net, order=order), Architect(net, order=order, cost=term)
        if order == 1:
            base, with_cost = plain._first_order(x, y, 0)[1], costly._first_order(x, y, 0)[1]
        else:
            base = plain._second_order(x, y, x, y, 0, weights)[1]
            with_cost = costly._second_order(x, y, x, y, 0, weights)[1]
        for b, c, e in zip(base, with_cost, expected):
            torch.testing.assert_close(c - b, e, rtol=1e-7, atol=1e-10)
