"""Deriving genotypes: two strongest edges per node, argmax operation, zeroise counted, and
gamma down-weighting the zeroise column (checked against a numpy re-implementation)."""
import numpy as np
import pytest
import torch

import bnas
from bnas import genotype as G
from bnas.ops import SPACES
from bnas.search.derive import derive, derive_cell

OPS = list(SPACES.get("bnas"))


def numpy_cell(weights: np.ndarray, gamma: float = 1.0):
    """BNAS's rule written independently: per node, inputs sorted (stably) by their row's
    maximum, the first two kept, each with its first maximal operation."""
    w = weights.astype(np.float64).copy()
    w[:, OPS.index("zeroise")] /= gamma
    nodes, row = [], 0
    for node in range(2, 6):
        block = w[row:row + node]
        order = np.argsort(-block.max(axis=1), kind="stable")[:2]
        nodes.append(tuple((OPS[int(np.argmax(block[j]))], int(j)) for j in order))
        row += node
    return tuple(nodes)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("gamma", [1.0, 3.0])
def test_matches_independent_implementation(seed, gamma):
    rng = np.random.default_rng(seed)
    weights = torch.softmax(torch.tensor(rng.normal(size=(14, 7)) * 2), dim=-1)
    cell = derive_cell(weights, OPS, 4, gamma)
    assert cell.nodes == numpy_cell(weights.numpy(), gamma)
    assert cell.concat == (2, 3, 4, 5)


def test_zeroise_counts_and_gamma_down_weights_it():
    weights = torch.full((14, 7), 0.1)
    weights[:, OPS.index("bin_conv_3x3")] = 0.2
    weights[0, OPS.index("zeroise")] = 0.5   # edge 0 -> 2: zeroise is the strongest op
    weights[1, OPS.index("zeroise")] = 0.3   # edge 1 -> 2
    cell = derive_cell(weights, OPS, 4)
    assert cell.nodes[0] == (("zeroise", 0), ("zeroise", 1))
    cell = derive_cell(weights, OPS, 4, gamma=3.0)    # 0.5/3 < 0.2, 0.3/3 < 0.2
    assert set(cell.nodes[0]) == {("bin_conv_3x3", 0), ("bin_conv_3x3", 1)}
    cell = derive_cell(weights, OPS, 4, gamma=2.0)    # 0.25 > 0.2 keeps edge 0's zeroise
    assert cell.nodes[0] == (("zeroise", 0), ("bin_conv_3x3", 1))


def test_ties_keep_the_earlier_input_and_operation():
    cell = derive_cell(torch.full((14, 7), 1 / 7), OPS, 4)
    assert all(node == (("zeroise", 0), ("zeroise", 1)) for node in cell.nodes)


def test_derived_genotypes_save_load_and_build(tmp_path):
    torch.manual_seed(0)
    weights = {k: torch.softmax(torch.randn(14, 8), -1) for k in ("normal", "reduce")}
    genotype = derive(weights, SPACES.get("bnas-skip"), 4, "bnas-skip", name="found")
    loaded = G.load(G.save(genotype, tmp_path / "found.json"))
    assert (loaded.normal, loaded.reduce, loaded.space) == (genotype.normal, genotype.reduce,
                                                            "bnas-skip")
    model = bnas.build_model(loaded, dataset="digits", layers=3, init_channels=4)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
