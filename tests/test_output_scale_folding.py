"""A scheme scales each output channel of its binary convolutions (``weight_scale``). These tests
use a test-only scheme with a learnable per-channel gain of both signs (a negative scale flips
which outputs the ReLU passes): the lean cells and the search's fast path, which run the
convolutions' adjoints on the folded weight ``gain * sign(W)``, must compute what the
reference path (the modules one after the other) computes, in float64, for values and every gradient."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import bnas
from bnas.binarize.base import Binarizer, BinaryConv2d
from bnas.binarize.ste import sign_clipped_ste, straight_through
from bnas.ops.lean import set_lean
from bnas.search import topology
from model_helpers import weighted_step
from search_helpers import cross_entropy_step, edge_convs, supernet_pair

TOL = dict(rtol=1e-10, atol=1e-10)


class GainConv2d(BinaryConv2d):
    """sign(x) * sign(W), times a learnable per-channel gain drawn around zero (both signs)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.randn(self.out_channels))

    def binarize_input(self, x: torch.Tensor) -> torch.Tensor:
        return sign_clipped_ste(x)

    def binary_weight(self) -> torch.Tensor:
        return straight_through(self.weight, torch.sign(self.weight))

    def weight_scale(self) -> torch.Tensor:
        return self.gain


class Gain(Binarizer):
    name = "test-gain"
    conv_class = GainConv2d


@pytest.mark.parametrize("arch", ["latest_cell_zeroise", "latest_cell"])
def test_lean_cells_fold_a_per_channel_gain_exactly(arch):
    torch.manual_seed(0)
    lean = bnas.build_model(arch, binarizer=Gain(), num_classes=3, layers=5,
                            init_channels=4).double()
    reference = copy.deepcopy(lean)
    set_lean(reference, False)
    lean.drop_path_prob = reference.drop_path_prob = 0.3
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    for seed in range(2):
        torch.testing.assert_close(weighted_step(lean, x, seed), weighted_step(reference, x, seed), **TOL)
        for (name, a), b in zip(reference.named_parameters(), lean.parameters()):
            torch.testing.assert_close(b.grad, a.grad, **TOL, msg=name)
    gains = [m.gain.grad for m in lean.modules() if isinstance(m, GainConv2d)]
    assert gains and all(g is not None for g in gains)
    assert any(g.abs().sum() > 0 for g in gains)


def test_fast_search_folds_a_per_channel_gain_exactly():
    fast, ref = supernet_pair(Gain(), "bnas-skip")
    x = torch.randn(6, 3, 12, 12, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    torch.testing.assert_close(cross_entropy_step(fast, x, y), cross_entropy_step(ref, x, y), **TOL)
    for a, b in zip(fast.arch_parameters(), ref.arch_parameters()):
        torch.testing.assert_close(a.grad, b.grad, **TOL)
    checked = 0
    for f_cell, r_cell in zip(fast.cells, ref.cells):
        for row, (node, source) in enumerate(topology.edges(f_cell.steps)):
            for k, op in enumerate(fast.op_names):
                for key, conv in edge_convs(f_cell, node, source, op).items():
                    r_op = r_cell.edges[row].ops[k]
                    r_conv = r_op.conv if key == "conv" else getattr(r_op, f"conv_{key}")
                    torch.testing.assert_close(conv.gain.grad, r_conv.gain.grad, **TOL)
                    torch.testing.assert_close(conv.weight.grad, r_conv.weight.grad, **TOL)
                    checked += 1
    assert checked > 0
