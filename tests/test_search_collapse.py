"""Collapse diagnostics and controls on a fixed seed: the parameter-free share is recorded and
plotted; --arch-warmup keeps the alphas as initialised; --max-param-free caps derived cells
(P-DARTS's rule, checked on hand-made weights); --stop-param-free ends the search (DARTS+)."""
import json

import pytest
import torch

from bnas import genotype as G
from bnas.binarize import get as get_binarizer
from bnas.cli import main
from bnas.ops import SPACES
from bnas.search import SearchNetwork
from bnas.search.collapse import count_parameter_free, is_parameter_free, parameter_free_share
from bnas.search.derive import derive_cell

TINY = ["--dataset", "digits", "--layers", "3", "--init-channels", "4", "--epochs", "2",
        "--subset", "160", "--batch-size", "32", "--device", "cpu", "--no-progress",
        "--workers", "0"]
OPS3 = ["zeroise", "max_pool_3x3", "bin_conv_3x3"]
#: rows: edges (2,0) (2,1) (3,0) (3,1) (3,2); uncapped: max_pool(0)+zeroise(1),
#: max_pool(2)+bin_conv(0): three parameter-free edges, weighing 0.9, 0.8 and 0.7
WEIGHTS = torch.tensor([[0.05, 0.9, 0.05], [0.8, 0.1, 0.1], [0.2, 0.2, 0.6],
                        [0.3, 0.35, 0.35], [0.1, 0.7, 0.2]])


def _records(out):
    return [json.loads(line) for line in (out / "genotypes.jsonl").read_text().splitlines()]


def test_parameter_free_operations_of_the_spaces():
    free = [op for op in SPACES.get("bnas-skip") if is_parameter_free(op)]
    assert free == ["zeroise", "max_pool_3x3", "avg_pool_3x3", "skip"]
    cell = G.load("latest_cell_zeroise").normal
    assert count_parameter_free(cell) == sum(op in free for _, op, _ in cell.edges)


def test_cap_keeps_the_strongest_parameter_free_choices():
    assert derive_cell(WEIGHTS, OPS3, 2).nodes == (
        (("max_pool_3x3", 0), ("zeroise", 1)), (("max_pool_3x3", 2), ("bin_conv_3x3", 0)))
    assert derive_cell(WEIGHTS, OPS3, 2, max_param_free=3) == derive_cell(WEIGHTS, OPS3, 2)
    # cap 1: edge 0->2 (0.9) keeps max_pool; the other edges lose zeroise and max_pool
    assert derive_cell(WEIGHTS, OPS3, 2, max_param_free=1).nodes == (
        (("max_pool_3x3", 0), ("bin_conv_3x3", 1)), (("bin_conv_3x3", 0), ("bin_conv_3x3", 1)))
    assert derive_cell(WEIGHTS, OPS3, 2, max_param_free=0).nodes == (
        (("bin_conv_3x3", 1), ("bin_conv_3x3", 0)), (("bin_conv_3x3", 0), ("bin_conv_3x3", 1)))


def test_share_recorded_and_plotted_and_cap_applied_on_a_fixed_seed(tmp_path):
    base, capped = tmp_path / "base", tmp_path / "capped"
    assert main(["search", *TINY, "--save", "base", "--out", str(base)]) == 0
    assert main(["search", *TINY, "--save", "capped", "--max-param-free", "1",
                 "--out", str(capped)]) == 0
    for record in _records(base):
        genotype = G.from_json(record["genotype"])
        assert record["parameter_free"] == parameter_free_share(genotype)
    assert max(count_parameter_free(G.from_json(r["genotype"]).normal)
               for r in _records(base)) > 1  # this seed collapses toward poolings
    for record in _records(capped):
        for cell in G.from_json(record["genotype"]).cells().values():
            assert count_parameter_free(cell) <= 1
    assert "parameter-free edges: normal" in (base / "log.txt").read_text()
    assert (base / "alphas_normal.png").stat().st_size > 0
    assert G.load("capped").provenance["search"]["max_param_free"] == 1
    # the cap changes the derivation only: the same seed learns the same alphas
    alphas = [json.loads(line) for line in (base / "alphas.jsonl").read_text().splitlines()]
    capped_alphas = [json.loads(line) for line in (capped / "alphas.jsonl").read_text().splitlines()]
    assert alphas == capped_alphas


def test_warmup_freezes_the_architecture(tmp_path):
    out = tmp_path / "warm"
    assert main(["search", *TINY, "--save", "warm", "--arch-warmup", "1", "--out", str(out)]) == 0
    torch.manual_seed(2)  # the search's seed, before the supernet is built
    initial = SearchNetwork(10, 4, 3, 4, "bnas", get_binarizer("plain"), "fast").edge_weights()
    alphas = [json.loads(line) for line in (out / "alphas.jsonl").read_text().splitlines()]
    assert torch.equal(torch.tensor(alphas[0]["normal"]), initial["normal"].cpu())
    assert not torch.equal(torch.tensor(alphas[1]["normal"]), initial["normal"].cpu())
    assert _records(out)[0]["train_loss"] < 2.5  # the weights trained meanwhile


def test_early_stop_when_parameter_free_edges_dominate(tmp_path, capsys):
    base = tmp_path / "base"
    assert main(["search", *TINY, "--epochs", "3", "--save", "b3", "--out", str(base)]) == 0
    first = count_parameter_free(G.from_json(_records(base)[0]["genotype"]).normal)
    assert first >= 1
    out = tmp_path / "stop"
    assert main(["search", *TINY, "--epochs", "3", "--save", "stop", "--stop-param-free",
                 str(first), "--out", str(out)]) == 0
    assert [r["epoch"] for r in _records(out)] == [0]
    assert G.load("stop").provenance["stopped_after_epoch"] == 1
    assert "stopping: " in (out / "log.txt").read_text()
    assert _records(out)[0]["genotype"]["normal"] == _records(base)[0]["genotype"]["normal"]
    assert main(["search", "--resume", str(out)]) == 0  # a stopped search stays stopped
    assert [r["epoch"] for r in _records(out)] == [0]


@pytest.mark.parametrize("args, message", [
    (["--max-param-free", "9"], "--max-param-free must be an integer from 0 to 8"),
    (["--stop-param-free", "-1"], "--stop-param-free must be an integer from 0 to 8"),
    (["--arch-warmup", "2"], "--arch-warmup must be an integer from 0 to 1 (below --epochs)"),
])
def test_bad_controls_are_one_line(args, message, capsys, tmp_path):
    assert main(["search", *TINY, "--save", "bad", "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
