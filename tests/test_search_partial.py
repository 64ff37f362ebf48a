"""Partial channels and edge normalisation (PC-DARTS): the shuffle and the edge weights against
values computed by hand, the fast path equal to the reference path in float64 (outputs,
every gradient, betas included), derivation through the betas, and K that does not divide C
refused in one line."""
import pytest
import torch
import torch.nn.functional as F

from bnas.cli import main
from bnas.search import SearchNetwork, topology
from bnas.search.partial import channel_shuffle, derivation_weights, edge_weights
from search_helpers import cross_entropy_step, edge_convs, supernet_pair

close = torch.testing.assert_close


def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_edge_weights_normalise_over_each_nodes_inputs():
    betas = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # steps = 2: 2 + 3 edges
    got = edge_weights(betas[:5], 2)
    e = torch.e
    close(got, torch.tensor([0.5, 0.5, e / (e + 2), 1 / (e + 2), 1 / (e + 2)]))
    weights = torch.tensor([[0.1, 0.9], [0.6, 0.4], [0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
    scaled = derivation_weights(weights, betas[:5], 2)
    close(scaled, weights * got.unsqueeze(1))


@pytest.mark.parametrize("binarizer, space, k", [("plain", "bnas", 4), ("recu", "bnas-skip", 2),
                                                 ("plain", "bnas-skip", 8)])
def test_fast_path_matches_reference_path_with_partial_channels(binarizer, space, k):
    fast, ref = supernet_pair(binarizer, space, c=8, partial=k)
    assert len(fast.arch_parameters()) == 4
    assert fast.cells[0].fanouts[0].channels == 8 // k
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64)
    y = torch.randint(0, 5, (4,))
    opts = dict(rtol=1e-9, atol=1e-10)
    close(cross_entropy_step(fast, x, y), cross_entropy_step(ref, x, y), **opts)
    for a, b in zip(fast.arch_parameters(), ref.arch_parameters()):
        assert a.grad is not None and a.grad.abs().sum() > 0
        close(a.grad, b.grad, **opts)
    ref_params = dict(ref.named_parameters())
    shared = [n for n, _ in fast.named_parameters() if n in ref_params and not n.startswith("alphas")]
    assert any("preprocess" in n for n in shared) and "classifier.weight" in shared
    for name, p in fast.named_parameters():
        if name in shared:
            close(p.grad, ref_params[name].grad, **opts)
    for f_cell, r_cell in zip(fast.cells, ref.cells):
        for row, (node, source) in enumerate(topology.edges(f_cell.steps)):
            for k_op, op in enumerate(fast.op_names):
                r_op = r_cell.edges[row].ops[k_op]
                for key, conv in edge_convs(f_cell, node, source, op).items():
                    r_conv = r_op.conv if key == "conv" else getattr(r_op, f"conv_{key}")
                    close(conv.weight.grad, r_conv.weight.grad, **opts)
    fast.eval()
    ref.eval()
    with torch.no_grad():
        close(fast(x), ref(x), **opts)


def test_partial_channels_change_the_supernet_as_the_paper_says():
    torch.manual_seed(0)
    full = SearchNetwork(5, c=8, layers=3, impl="reference")
    torch.manual_seed(0)
    part = SearchNetwork(5, c=8, layers=3, impl="reference", partial=4)
    conv = lambda net: net.cells[0].edges[0].ops[-1].conv.weight  # noqa: E731
    assert conv(full).shape[:2] == (8, 8) and conv(part).shape[:2] == (2, 2)
    assert sum(p.numel() for p in part.weight_parameters()) < \
        sum(p.numel() for p in full.weight_parameters()) / 4
    # with every beta equal, derivation picks what the alphas alone pick
    with torch.no_grad():
        part.betas_normal.zero_()
        part.betas_reduce.zero_()
    plain = part.edge_weights()
    for kind, w in part.derivation_weights().items():
        for node, start in ((2, 0), (3, 2), (4, 5), (5, 9)):
            close(w[start:start + node], plain[kind][start:start + node] / node)
    assert topology.n_edges(4) == part.betas_normal.numel()


def test_search_with_partial_channels_records_betas(tmp_path):
    assert main(["search", "--dataset", "digits", "--layers", "3", "--init-channels", "8",
                 "--epochs", "1", "--subset", "96", "--batch-size", "32", "--device", "cpu",
                 "--no-progress", "--workers", "0", "--partial-channels", "4", "--save", "pc",
                 "--out", str(tmp_path / "run")]) == 0
    from bnas import genotype as G

    prov = G.load("pc").provenance
    assert prov["search"]["partial_channels"] == 4
    assert len(prov["betas"]["normal"]) == 14
    betas = torch.tensor(prov["betas"]["normal"])
    assert not torch.equal(betas, torch.zeros(14))
    assert F.softmax(betas[:2], dim=0).sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("k", ["3", "0"])
def test_k_must_divide_the_channels(k, capsys, tmp_path):
    assert main(["search", "--dataset", "digits", "--init-channels", "8", "--partial-channels", k,
                 "--save", "bad", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--partial-channels must be an integer >= 1 that divides --init-channels (8)" in err
    assert len(err.strip().splitlines()) == 1
