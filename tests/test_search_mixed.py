"""The fast supernet path computes what the reference path computes (outputs, every
gradient, BatchNorm statistics), for every scheme in every space and for operations it computes
edge by edge, and a supernet with one-hot weights is the genotype's cell."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnas import genotype as G
from bnas import binarize
from bnas.binarize import get as get_binarizer
from bnas.model.cell import EvalCell
from bnas.errors import BnasError
from bnas.ops import OPS, SPACES, FastKind, OpInfo, RealConvOp, Zero
from bnas.search import topology
from bnas.search.cell import FastCell
from bnas.search.autograd import (_compact, _grouped_input_grad, _pack_masks, _unpack_mask,
                                  fast_layout)
from bnas.search.fanout import _binary_weight
from search_helpers import cross_entropy_step, edge_convs, edge_module, supernet_pair

#: Every registered scheme in every search space.
CASES = [(scheme, space) for scheme in binarize.names() for space in SPACES.names()]


def close(a, b, what):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m: f"{what}: {m}")


def assert_paths_agree(fast, ref):
    """Logits, every gradient, BatchNorm statistics and eval-mode logits of a fast-path supernet
    and a reference-path one holding the same weights."""
    x = torch.randn(6, 3, 12, 12, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    close(cross_entropy_step(fast, x, y), cross_entropy_step(ref, x, y), "logits")
    for a, b in zip(fast.arch_parameters(), ref.arch_parameters()):
        close(a.grad, b.grad, "alpha gradient")
    close(fast.stem[1].weight.grad, ref.stem[1].weight.grad, "stem gradient")
    for f_cell, r_cell in zip(fast.cells, ref.cells):
        close(f_cell.preprocess0.conv.weight.grad, r_cell.preprocess0.conv.weight.grad, "preprocess")
        for row, (node, source) in enumerate(topology.edges(f_cell.steps)):
            fanout, mixed = f_cell.fanouts[source], r_cell.edges[row]
            for k, op in enumerate(fast.op_names):
                r_op = mixed.ops[k]
                for key, conv in edge_convs(f_cell, node, source, op).items():
                    r_conv = r_op.conv if key == "conv" else getattr(r_op, f"conv_{key}")
                    for (name, p), (_, q) in zip(conv.named_parameters(), r_conv.named_parameters()):
                        close(p.grad, q.grad, f"{op} {name} gradient")
                    close(fanout.bn.running_mean, r_op.bn.running_mean, "binary BN statistics")
                    close(fanout.bn.running_var, r_op.bn.running_var, "binary BN statistics")
                if op in fanout.pools:
                    close(fanout.pools[op][1].running_var, r_op[1].running_var, "pool BN statistics")
                module = edge_module(f_cell, node, source, op)
                if module is not None:  # computed edge by edge
                    for (name, p), (_, q) in zip(module.named_parameters(), r_op.named_parameters()):
                        close(p.grad, q.grad, f"{op} {name} gradient")
                    for (name, b), (_, c) in zip(module.named_buffers(), r_op.named_buffers()):
                        close(b, c, f"{op} {name}")
    fast.eval()
    ref.eval()
    with torch.no_grad():
        close(fast(x), ref(x), "eval-mode logits")


@pytest.mark.parametrize("binarizer, space", CASES)
def test_fast_path_matches_reference_path(binarizer, space):
    assert_paths_agree(*supernet_pair(binarizer, space))


def _edge_by_edge(monkeypatch, name):
    """Make operation ``name`` declare no fast-path treatment (for this test)."""
    monkeypatch.setitem(OPS._items, name, dataclasses.replace(OPS.get(name), fast=(None, None)))


@pytest.mark.parametrize("ops", [("bin_conv_3x3", "max_pool_3x3"), ("skip",)])
def test_operations_without_a_fast_treatment_run_edge_by_edge(monkeypatch, ops):
    for name in ops:
        _edge_by_edge(monkeypatch, name)
    fast, ref = supernet_pair("recu", "bnas-skip")
    cell = fast.cells[0]
    assert all(name in cell.fanouts[0].edge_ops and name not in cell.fanouts[0].convs
               for name in ops)
    assert_paths_agree(fast, ref)


def test_an_unknown_module_type_is_searched_edge_by_edge(monkeypatch):
    """A new operation (a real 3x3 convolution, no fast treatment declared) in a new space."""
    monkeypatch.setitem(OPS._items, "real_conv_3x3", OpInfo(
        lambda c, s, b, a: RealConvOp(c, c, 3, s, 1, affine=a), "real 3x3 conv"))
    monkeypatch.setitem(SPACES._items, "with-real", ("zeroise", "real_conv_3x3", "bin_conv_3x3"))
    assert_paths_agree(*supernet_pair("plain", "with-real"))


def test_a_wrong_fast_declaration_is_refused(monkeypatch):
    info = OPS.get("max_pool_3x3")
    monkeypatch.setitem(OPS._items, "max_pool_3x3",
                        dataclasses.replace(info, fast=(FastKind.CONV, FastKind.CONV)))
    with pytest.raises(BnasError, match="declares the fast path's 'conv' treatment"):
        supernet_pair("plain", "bnas")


def test_gradient_modes_compute_the_same_gradients():
    fast, _ = supernet_pair("plain", "bnas-skip")
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64)
    y = torch.randint(0, 5, (4,))
    cross_entropy_step(fast, x, y)
    alphas = [a.grad.clone() for a in fast.arch_parameters()]
    weights = {n: p.grad.clone() for n, p in fast.named_parameters() if "alphas" not in n}
    with fast.grads_for("arch"):
        grads = torch.autograd.grad(F.cross_entropy(fast(x), y), fast.arch_parameters())
    for a, g in zip(alphas, grads):
        close(g, a, "alpha gradient in arch mode")
    fast.zero_grad(set_to_none=True)
    with fast.grads_for("weights"):
        F.cross_entropy(fast(x), y).backward()
    assert all(a.grad is None for a in fast.arch_parameters())
    for name, p in fast.named_parameters():
        if name in weights:
            close(p.grad, weights[name], f"{name} in weights mode")


def saved_bytes(net, x, y, mode):
    total = {}

    def pack(t):
        total[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), net.grads_for(mode):
        F.cross_entropy(net(x), y)
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    return sum(v for k, v in total.items() if k not in params)


@pytest.mark.parametrize("mode", ["weights", "arch"])
def test_fast_path_keeps_far_less_for_the_backward_pass(mode):
    fast, ref = supernet_pair("plain", "bnas", layers=3, c=8)
    fast.float(), ref.float()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    assert saved_bytes(fast, x, y, mode) < saved_bytes(ref, x, y, "both") / 3
    assert not any(isinstance(m, Zero) for m in fast.modules())  # zeroise is never computed


# -- float32: channels-last memory layout, packed ReLU masks -------------------------------------
@pytest.mark.parametrize("space", ["bnas", "bnas-skip"])
def test_float32_channels_last_fast_path_matches_reference_path(space):
    """In float32 the fast path runs channels-last (see ``fast_layout``); it still computes what
    the reference path computes, to float32 rounding."""
    fast, ref = supernet_pair("plain", space, c=8)
    fast.float(), ref.float()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    logits = cross_entropy_step(fast, x, y)
    torch.testing.assert_close(logits, cross_entropy_step(ref, x, y), rtol=1e-4, atol=1e-5)
    grads = [(a.grad, b.grad) for a, b in zip(fast.arch_parameters(), ref.arch_parameters())]
    grads.append((fast.stem[1].weight.grad, ref.stem[1].weight.grad))
    for a, b in grads:
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()))


def test_fast_layout_is_channels_last_in_float32_only():
    x = torch.randn(2, 4, 5, 5)
    assert fast_layout(x).is_contiguous(memory_format=torch.channels_last)
    assert fast_layout(x.double()).is_contiguous()


def test_packed_masks_unpack_to_the_masks():
    masks = [torch.rand(3, 4, 5) > 0.5 for _ in range(8)]
    packed = _pack_masks(masks)
    assert packed.dtype == torch.uint8 and packed.shape == masks[0].shape
    for k, mask in enumerate(masks):
        assert torch.equal(_unpack_mask(packed, k), mask.to(torch.uint8))


@pytest.mark.parametrize("stride, padding, dilation, k", [(1, 1, 1, 3), (2, 2, 1, 5), (1, 4, 2, 5),
                                                          (2, 2, 2, 3)])
def test_grouped_input_gradient_is_each_edges_input_gradient(stride, padding, dilation, k):
    edges, c_in, c = 3, 4, 2
    x = torch.randn(2, c_in, 9, 9, dtype=torch.float64)
    weight = torch.randn(edges * c, c_in, k, k, dtype=torch.float64)
    g = torch.randn_like(F.conv2d(x, weight, None, stride, padding, dilation))
    geometry = ((stride,) * 2, (padding,) * 2, (dilation,) * 2)
    dx = _grouped_input_grad(g, weight, x.shape, geometry, edges)
    for e in range(edges):
        xe = x.clone().requires_grad_()
        ye = F.conv2d(xe, weight[e * c:(e + 1) * c], None, stride, padding, dilation)
        (expected,) = torch.autograd.grad(ye, xe, g[:, e * c:(e + 1) * c])
        close(dx[:, e], expected, f"edge {e} input gradient")


# -- a supernet with one-hot weights is the genotype's cell ------------------------------------
SKIP_GENOTYPE = {
    "format": 1, "name": "skips", "kind": "cell", "space": "bnas-skip",
    "normal": {"nodes": [[["skip", 0], ["bin_conv_3x3", 1]], [["avg_pool_3x3", 2], ["skip", 1]],
                         [["bin_dil_conv_5x5", 3], ["zeroise", 0]],
                         [["max_pool_3x3", 4], ["bin_conv_5x5", 2]]], "concat": [2, 3, 4, 5]},
    "reduce": {"nodes": [[["skip", 0], ["max_pool_3x3", 1]], [["skip", 1], ["bin_conv_3x3", 2]],
                         [["avg_pool_3x3", 0], ["bin_dil_conv_3x3", 3]],
                         [["zeroise", 1], ["skip", 4]]], "concat": [2, 3, 4, 5]},
}


def one_hot(spec, op_names, steps):
    chosen = {(i + 2, j): op for i, node in enumerate(spec.nodes) for op, j in node}
    rows = [op_names.index(chosen.get(edge, "zeroise")) for edge in topology.edges(steps)]
    return F.one_hot(torch.tensor(rows), len(op_names)).double()


def transplant(cell: FastCell, eval_cell: EvalCell, spec) -> None:
    """Give the evaluated cell the supernet's weights and statistics; the supernet's
    BatchNorm after each pooling (which evaluated cells do not have) becomes the identity."""
    ops = iter(eval_cell.ops)
    for i, node in enumerate(spec.nodes):
        for op_name, source in node:
            op = next(ops)
            fanout = cell.fanouts[source]
            for key, conv in edge_convs(cell, i + 2, source, op_name).items():
                target = op.conv if key == "conv" else getattr(op, f"conv_{key}")
                target.load_state_dict(conv.state_dict())
                op.bn.running_mean.copy_(fanout.bn.running_mean)
                op.bn.running_var.copy_(fanout.bn.running_var)
    for fanout in cell.fanouts:
        for _, bn in fanout.pools.values():
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)


@pytest.mark.parametrize("impl_genotype", [("latest_cell", "bnas"), ("latest_cell_zeroise", "bnas"),
                                           ("skips", "bnas-skip")])
@pytest.mark.parametrize("cell_type", ["normal", "reduce"])
def test_one_hot_supernet_cell_is_the_genotype_cell(impl_genotype, cell_type):
    """Same weights, eval mode: the nodes of a search cell whose alphas are one-hot on the
    genotype's edges (zeroise elsewhere) equal the evaluated cell's. Preprocessing differs by
    design (real while searching, binary when evaluated), so both cells read the same
    preprocessed inputs."""
    name, space = impl_genotype
    genotype = G.from_json(SKIP_GENOTYPE) if name == "skips" else G.load(name)
    spec = getattr(genotype, cell_type)
    reduction = cell_type == "reduce"
    binarizer = get_binarizer("plain")
    torch.manual_seed(3)
    cell = FastCell(8, 8, 8, reduction, False, residual=False, space=space,
                    binarizer=binarizer).double()
    eval_cell = EvalCell(spec, 8, 8, 8, reduction, False, residual=False, binarizer=binarizer).double()
    s0, s1 = torch.randn(2, 4, 8, 10, 10, dtype=torch.float64)
    cell.train()
    cell.nodes([s0, s1], torch.full((14, len(SPACES.get(space))), 1 / 7, dtype=torch.float64))
    transplant(cell, eval_cell, spec)
    cell.eval(), eval_cell.eval()
    eval_cell.preprocess0 = eval_cell.preprocess1 = nn.Identity()
    with torch.no_grad():
        nodes = cell.nodes([s0, s1], one_hot(spec, list(SPACES.get(space)), 4))
        torch.testing.assert_close(torch.cat(nodes, dim=1), eval_cell(s0, s1), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("scheme", ["plain", "rbnn", "recu", "siman", "bop", "bop2"])
def test_every_schemes_binary_weights_are_kept_as_int8_signs_losslessly(scheme):
    conv = get_binarizer(scheme).conv(6, 5, 3, padding=1).double().train()
    sign, scale = _binary_weight(conv, detach=True)
    stored = _compact(sign)
    assert stored.dtype == torch.int8 and torch.equal(stored.to(torch.float64), sign)
    assert set(sign.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert (scale is None) == (scheme in ("bop", "bop2"))
    assert scale is None or (scale.shape == (5,) and scale.dtype == torch.float64)


def test_weights_that_are_not_binary_are_kept_as_they_are():
    weight = torch.tensor([[[[0.5, -0.5]]], [[[0.25, 0.75]]]])
    assert _compact(weight) is weight
