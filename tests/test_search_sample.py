"""The random-search baseline: uniform over exactly the cells the BNAS derivation can produce
(chi-square over every cell of a small space), saved like searched genotypes with provenance,
optionally inside a cost band; bad input is one line and exit 2."""
import itertools
import json
import math
import random
from collections import Counter

import pytest
import torch
from scipy.stats import chisquare

import bnas
from bnas import genotype as G
from bnas.cli import main
from bnas.errors import BnasError
from bnas.ops import SPACES
from bnas.search import resolve
from bnas.search.derive import derive_cell
from bnas.search.sample import (CostBand, count_cells, draw, network_cost, parse_amount,
                                sample_cell, sample_genotype)
from bnas.search.topology import edges


def _all_cells(op_names, steps):
    """Every cell derive_cell can return, listed with the lower input first."""
    per_node = []
    for node in range(2, steps + 2):
        per_node.append([tuple((op, j) for op, j in zip(ops, pair))
                         for pair in itertools.combinations(range(node), 2)
                         for ops in itertools.product(op_names, repeat=2)])
    return [tuple(nodes) for nodes in itertools.product(*per_node)]


def _one_hot(cell, op_names, steps):
    """Softmax-like weights for which derive_cell returns ``cell``: its edges weigh 1 on their
    operation, every other edge 1/2 spread evenly (never the strongest)."""
    weights = torch.full((len(edges(steps)), len(op_names)), 0.5 / len(op_names))
    rows = {edge: row for row, edge in enumerate(edges(steps))}
    for i, node in enumerate(cell.nodes):
        for op, j in node:
            weights[rows[(i + 2, j)]] = 0.0
            weights[rows[(i + 2, j)], op_names.index(op)] = 1.0
    return weights


def test_counts_of_the_space():
    assert count_cells(7, 4) == 1 * 3 * 6 * 10 * 7 ** 8
    assert count_cells(2, 2) == len(_all_cells(["a", "b"], 2)) == 48
    assert count_cells(3, 3) == len(_all_cells(["a", "b", "c"], 3)) == 1 * 3 * 6 * 3 ** 6


def test_every_cell_of_a_small_space_equally_likely():
    op_names, steps, draws = ["zeroise", "max_pool_3x3", "bin_conv_3x3"], 2, 27 * 400
    cells = _all_cells(op_names, steps)
    rng = random.Random(0)
    counts = Counter(sample_cell(rng, op_names, steps).nodes for _ in range(draws))
    assert set(counts) == set(cells)  # nothing outside the space, all of it reached
    observed = [counts[c] for c in cells]
    assert chisquare(observed).pvalue > 0.01
    # the same test rejects a sampler that prefers the newest predecessors
    biased = Counter()
    for _ in range(draws):
        nodes = []
        for node in range(2, steps + 2):
            first = rng.randrange(node)
            second = node - 1 if first != node - 1 and rng.random() < 0.6 else \
                rng.choice([j for j in range(node) if j != first])
            nodes.append(tuple((rng.choice(op_names), j) for j in sorted((first, second))))
        biased[tuple(nodes)] += 1
    assert chisquare([biased[c] for c in cells]).pvalue < 1e-6


def test_bnas_space_marginals_uniform_and_cells_derivable():
    op_names = list(SPACES.get("bnas"))
    rng = random.Random(1)
    ops, pairs = Counter(), {node: Counter() for node in range(2, 6)}
    for _ in range(3000):
        cell = sample_cell(rng, op_names, 4)
        for i, node in enumerate(cell.nodes):
            pairs[i + 2][tuple(j for _, j in node)] += 1
            ops.update(op for op, _ in node)
        assert cell.concat == (2, 3, 4, 5)
        derived = derive_cell(_one_hot(cell, op_names, 4), op_names, 4)
        assert [sorted(n, key=lambda e: e[1]) for n in derived.nodes] == [list(n) for n in cell.nodes]
    assert chisquare([ops[op] for op in op_names]).pvalue > 0.01  # zeroise drawn like the rest
    for node, counter in pairs.items():
        assert len(counter) == math.comb(node, 2)
        if node > 2:  # node 2 has one pair only
            assert chisquare(list(counter.values())).pvalue > 0.01


def test_cli_saves_named_genotypes_with_provenance(tmp_path, capsys):
    assert main(["search", "--strategy", "random", "--samples", "3", "--save", "rnd",
                 "--dataset", "fashion-mnist", "--seed", "5"]) == 0
    assert "rnd_0, rnd_1, rnd_2" in capsys.readouterr().out
    loaded = [G.load(f"rnd_{k}") for k in range(3)]  # found by name, validated
    cfg = resolve({"strategy": "random", "samples": 3, "save": "rnd", "dataset": "fashion-mnist",
                   "seed": 5})
    assert [g.to_json()["normal"] for g in loaded] == [g.to_json()["normal"] for g in draw(cfg)]
    prov = loaded[1].provenance
    assert (prov["strategy"], prov["sample"], prov["seed"], prov["space"]) == ("random", 1, 5, "bnas")
    assert prov["bnas_version"] == bnas.__version__ and prov["steps"] == 4
    assert main(["search", "--strategy", "random", "--samples", "1", "--save", "rnd"]) == 2
    assert "exists" in capsys.readouterr().err


def test_cost_band_keeps_only_networks_inside_it(tmp_path):
    base = {"strategy": "random", "save": "b", "dataset": "digits", "layers": 3,
            "init_channels": 4, "image_size": 8, "seed": 0}
    free = draw(resolve({**base, "samples": 12}))
    costs = sorted(network_cost(g, resolve(base))["params"] for g in free)
    low, high = costs[3], costs[8]
    kept = draw(resolve({**base, "samples": 4, "cost_band": {"params": f"{low}:{high}"}}))
    for genotype in kept:
        cost = genotype.provenance["cost"]
        assert low <= cost["params"] <= high
        assert cost == network_cost(genotype, resolve(base))
    assert kept[0].provenance["draws"] >= 1 and kept[-1].provenance["cost_band"] == {
        "params": f"{low}:{high}"}
    with pytest.raises(BnasError, match="fell in the cost band"):
        draw(resolve({**base, "samples": 1, "cost_band": {"ops": ":1"}}))


def test_amounts_and_bands():
    assert parse_amount("250K") == 250e3 and parse_amount("1.5M") == 1.5e6
    assert parse_amount("2e6") == 2e6 and parse_amount("3G") == 3e9
    band = CostBand.from_settings({"params": "100K:", "ops": ":2M"})
    assert band.holds({"params": 1e5, "ops": 2e6}) and not band.holds({"params": 9e4, "ops": 1})
    assert not CostBand.from_settings({})


@pytest.mark.parametrize("args, message", [
    (["--strategy", "evolution"], "unknown search strategy 'evolution'"),
    (["--strategy", "random", "--samples", "0"], "--samples must be an integer >= 1"),
    (["--samples", "3"], "--samples and --band-params/--band-ops apply to --strategy random"),
    (["--strategy", "random", "--band-params", "300K"], "--band-params expects LO:HI"),
    (["--strategy", "random", "--band-ops", "2M:1M"], "the lower bound exceeds the upper"),
    (["--strategy", "random", "--band-ops", "lots:"], "cannot read the amount 'lots'"),
    (["--image-size", "14"], "--image-size must be a multiple of 4"),
])
def test_bad_input_is_one_line(args, message, capsys):
    assert main(["search", "--save", "bad", "--dataset", "digits", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not G.user_dir().exists() or not list(G.user_dir().iterdir())


def test_genotype_draws_are_reproducible_and_independent_per_cell():
    a = sample_genotype(random.Random(7), "bnas-skip", 4, "x")
    b = sample_genotype(random.Random(7), "bnas-skip", 4, "x")
    assert json.dumps(a.to_json()) == json.dumps(b.to_json()) and a.space == "bnas-skip"
    assert a.normal != a.reduce
