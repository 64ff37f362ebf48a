"""The lean training path of cell networks (bnas.ops.lean, EvalCell.forward_lean) computes the
same values, gradients and statistics as the reference path (the modules one after the other)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import bnas
from bnas import genotype as G
from bnas.binarize import get as get_binarizer
from bnas.binarize import names
from bnas.model.cell import live_states
from bnas.ops import BinConvOp, Zero
from bnas.ops.lean import drop_factor, set_lean
from model_helpers import weighted_step

TOL = dict(rtol=1e-10, atol=1e-10)

# Every path of the lean cell: skip (identity and factorized reduce), poolings (one computed for
# two edges), a binary op whose node only feeds zeroise (normal node 4: it runs without autograd
# and its parameters get zero gradients), a node of zeros read by a pooling (reduce node 2).
PROBE = G.from_json({
    "format": 1, "name": "lean_probe", "kind": "cell", "space": "bnas-skip",
    "normal": {"nodes": [[["skip", 0], ["bin_conv_3x3", 1]], [["avg_pool_3x3", 2], ["zeroise", 1]],
                         [["bin_dil_conv_3x3", 3], ["zeroise", 0]],
                         [["zeroise", 4], ["max_pool_3x3", 0]]], "concat": [2, 3, 5]},
    "reduce": {"nodes": [[["zeroise", 0], ["zeroise", 1]], [["avg_pool_3x3", 2], ["skip", 0]],
                         [["max_pool_3x3", 0], ["max_pool_3x3", 1]],
                         [["max_pool_3x3", 0], ["bin_conv_5x5", 1]]], "concat": [3, 4, 5]}})


def pair(arch, scheme: str, **kwargs) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    lean = bnas.build_model(arch, binarizer=scheme, num_classes=3, **kwargs).double()
    reference = copy.deepcopy(lean)
    set_lean(reference, False)
    return lean, reference


def assert_same_state(lean: nn.Module, reference: nn.Module) -> None:
    for (name, a), b in zip(reference.named_parameters(), lean.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, **TOL, msg=name)
        torch.testing.assert_close(b, a, **TOL, msg=name)
    for (name, a), b in zip(reference.named_buffers(), lean.buffers()):
        torch.testing.assert_close(b, a, **TOL, msg=name)


@pytest.mark.parametrize("arch", ["latest_cell_zeroise", "latest_cell", PROBE],
                         ids=["bnas-a", "latest_cell", "probe"])
@pytest.mark.parametrize("scheme", names())
def test_lean_network_matches_the_module_composition(arch, scheme):
    lean, reference = pair(arch, scheme, layers=5, init_channels=4)
    # In the probe, a dropped sample can reach the dead operation as a constant; binarizers that
    # standardise each sample then give it a 0 * NaN gradient on the reference path (the lean
    # path does not differentiate dead operations and gives 0), so only plain drops there.
    drop = 0.3 if arch is not PROBE or scheme == "plain" else 0.0
    lean.drop_path_prob = reference.drop_path_prob = drop
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    for mode, steps in (("train", 2), ("eval", 1)):
        lean.train(mode == "train"), reference.train(mode == "train")
        for seed in range(steps):
            out_lean, grad_lean = weighted_step(lean, x, seed)
            out_ref, grad_ref = weighted_step(reference, x, seed)
            torch.testing.assert_close(out_lean, out_ref, **TOL)
            torch.testing.assert_close(grad_lean, grad_ref, **TOL)
            assert_same_state(lean, reference)


def test_zeroise_is_not_computed_and_lean_keeps_less():
    lean, reference = pair("latest_cell_zeroise", "plain", layers=5, init_channels=8)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)

    def saved(model: nn.Module) -> int:
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        return sum(v for k, v in storages.items() if k not in params)

    calls = []
    handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in lean.modules()
               if isinstance(m, Zero)]
    assert saved(lean) < saved(reference) / 2
    assert not calls
    for h in handles:
        h.remove()


@pytest.mark.parametrize("scheme", names())
@pytest.mark.parametrize("affine, momentum", [(True, 0.1), (False, None)])
def test_binary_op_matches_batchnorm_binarize_conv_relu(scheme, affine, momentum):
    """One op, against torch's own modules: values, every gradient, running statistics."""
    torch.manual_seed(1)
    op = BinConvOp(5, 6, 3, 1, 2, get_binarizer(scheme), dilation=2, affine=affine).double()
    op.bn.momentum = momentum
    if affine:
        nn.init.uniform_(op.bn.weight, 0.5, 1.5), nn.init.uniform_(op.bn.bias, -0.3, 0.3)
    reference = copy.deepcopy(op)
    set_lean(reference, False)
    factor = drop_factor(4, torch.empty(0, dtype=torch.float64), 0.5)
    for _ in range(2):
        x = torch.randn(4, 5, 8, 6, dtype=torch.float64)
        outs = []
        for module in (op, reference):
            module.zero_grad(set_to_none=True)
            xi = x.clone().requires_grad_()
            y = module(xi, factor)
            (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
            outs.append((y.detach(), xi.grad))
        torch.testing.assert_close(outs[0], outs[1], **TOL)
        assert_same_state(op, reference)
    assert int(op.bn.num_batches_tracked) == 2


def test_drop_factor_is_mask_over_keep():
    torch.manual_seed(0)
    f = drop_factor(1000, torch.empty(0), 0.2).flatten()
    assert torch.equal(f.unique(), torch.tensor([0.0, 1.0 / 0.8]))
    assert 0.7 < (f > 0).float().mean() < 0.9


def test_live_states_follow_non_zeroise_edges():
    nodes = [[1, 0], [1, 2], [2, 3], [3, 4]]
    zero = [True, False, False, True, True, True, True, True]        # BNAS-A's normal cell
    assert live_states(nodes, zero, [2, 3, 4, 5]) == {0, 1, 2, 3, 4, 5}
    reduce_nodes = [[0, 1], [0, 2], [3, 2], [3, 4]]                  # its reduction cell
    reduce_zero = [False, True, False, True, True, True, True, True]
    assert live_states(reduce_nodes, reduce_zero, [2, 3, 4, 5]) == {0, 2, 3, 4, 5}
