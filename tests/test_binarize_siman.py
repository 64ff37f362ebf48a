"""SiMaN: projection, mask, forward, gradients, schedule, groups and validation, checked against
hand-written formulas."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import bnas
import bnas.binarize as B
from bnas.binarize.siman import SiMaNConv2d, percentile
from bnas.errors import BnasError
from binarize_formulas import (GEOMETRIES, IN, KERNEL, OUT, assert_close, bireal_slope, conv,
                               conv_input_grad, conv_weight_grad, normalize, normalize_backward,
                               run_layer, seeded)
from scheme_layers import alpha_layer, schedule


def make_layer(geometry: dict, epoch: int, epochs: int = 400) -> SiMaNConv2d:
    return alpha_layer("siman", geometry, epoch, epochs)


def project_by_hand(w: np.ndarray, percent: float) -> np.ndarray:
    """Centre per out-channel, clip |w1| to the layer's [p, 100 - p] percentiles, keep the sign."""
    w1 = w - w.reshape(w.shape[0], -1).mean(axis=1).reshape(-1, 1, 1, 1)
    lo, hi = np.percentile(np.abs(w1), percent), np.percentile(np.abs(w1), 100 - percent)
    return np.sign(w1) * np.clip(np.abs(w1), lo, hi)


def mask_by_hand(x: np.ndarray) -> np.ndarray:
    """1 at the floor(N/2) largest entries of each row (a full sort per row), else 0."""
    rows = x.reshape(x.shape[0], -1)
    mask = np.zeros_like(rows)
    for i, row in enumerate(rows):
        mask[i, np.argsort(-row)[: row.size // 2]] = 1.0
    return mask.reshape(x.shape)


def expected(w_projected: torch.Tensor, alpha: torch.Tensor, mask: torch.Tensor, x: torch.Tensor,
             g: torch.Tensor, geometry: dict):
    """SiMaN's forward and gradients for a projected weight and a given mask, by hand."""
    w2 = normalize(w_projected, eps=1e-5)
    bw = 2.0 * mask - 1.0
    a1 = normalize(x, eps=1e-5)
    ba = torch.sign(a1)
    core = conv(ba, bw, geometry)
    y = core * alpha
    d_alpha = (g * core).sum(dim=(0, 2, 3)).view_as(alpha)
    gy = g * alpha
    d_x = normalize_backward(x, conv_input_grad(x.shape, bw, gy, geometry) * bireal_slope(a1),
                             eps=1e-5)
    d_w2 = conv_weight_grad(ba, w_projected.shape, gy, geometry) * torch.sign(w2)  # d|w2|/dw2
    d_w = normalize_backward(w_projected, d_w2, eps=1e-5)
    return y, d_x, d_w, d_alpha


@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_training_forward_and_gradients_match_formulas(geometry):
    layer = make_layer(geometry, epoch=100)  # p = 11.25
    w0 = layer.weight.detach().clone()
    x = seeded(2, IN, 9, 9, seed=4)
    g = seeded(*layer(x).shape, seed=5)
    with torch.no_grad():
        layer.weight.copy_(w0)  # undo the projection that sizing the output did
    y, d_x = run_layer(layer, x, g)
    w_projected = torch.from_numpy(project_by_hand(w0.numpy(), 11.25))
    assert_close(layer.weight.detach(), w_projected)  # projected in place
    mask = torch.from_numpy(mask_by_hand(normalize(w_projected, eps=1e-5).abs().numpy()))
    assert_close(layer.B, mask)
    assert (mask.flatten(1).sum(dim=1) == IN * KERNEL * KERNEL // 2).all()
    y_ref, d_x_ref, d_w_ref, d_alpha_ref = expected(w_projected, layer.alpha.detach(), mask, x, g,
                                                    geometry)
    assert_close(y, y_ref)
    assert_close(d_x, d_x_ref)
    assert_close(layer.weight.grad, d_w_ref)
    assert_close(layer.alpha.grad, d_alpha_ref)


def test_eval_reuses_the_stored_mask():
    geometry = GEOMETRIES["plain"]
    layer = make_layer(geometry, epoch=399)
    x = seeded(2, IN, 9, 9, seed=4)
    layer(x)  # training pass: computes and stores B
    stored = layer.B.clone()
    with torch.no_grad():  # a new latent weight whose magnitude ranking differs
        layer.weight.copy_(seeded(OUT, IN, KERNEL, KERNEL, seed=9))
    w_new = layer.weight.detach().clone()
    layer.eval()
    g = seeded(*layer(x).shape, seed=5)
    with torch.no_grad():
        layer.weight.copy_(w_new)
    y, d_x = run_layer(layer, x, g)
    assert torch.equal(layer.B, stored)
    w_projected = torch.from_numpy(project_by_hand(w_new.numpy(), 15 * (1 - 399 / 400)))
    assert_close(layer.weight.detach(), w_projected)  # evaluation projects too
    assert not torch.equal(stored, torch.from_numpy(
        mask_by_hand(normalize(w_projected, eps=1e-5).abs().numpy())))
    y_ref, d_x_ref, _, _ = expected(w_projected, layer.alpha.detach(), stored, x, g, geometry)
    assert_close(y, y_ref)
    assert_close(d_x, d_x_ref)


def test_initial_state():
    torch.manual_seed(5)
    layer = B.get("siman").conv(3, 4, 3)  # N = 27: 13 ones per row
    w = layer.weight.detach()
    torch.testing.assert_close(layer.alpha.detach(), w.abs().mean(dim=(1, 2, 3)).view(4, 1, 1))
    mask = mask_by_hand(normalize(w.double(), eps=1e-5).abs().numpy())
    np.testing.assert_array_equal(layer.B.numpy(), mask)
    assert (layer.B.flatten(1).sum(dim=1) == 13).all()
    assert float(layer.percent) == pytest.approx(15.0)


@pytest.mark.parametrize("q", [0.0, 0.0375, 7.5, 15.0, 50.0, 92.5, 100.0])
def test_percentile_matches_numpy(q):
    values = seeded(1000, seed=3).abs()
    ranked = values.sort().values
    got = float(percentile(ranked, torch.tensor(q, dtype=torch.float64)))
    assert got == pytest.approx(np.percentile(values.numpy(), q), rel=1e-12)


def test_schedule():
    assert schedule("siman", "percent", 400, (0, 200, 399)) == [
        pytest.approx([p, p], rel=1e-6) for p in (15.0, 7.5, 0.0375)]


def test_param_groups_no_decay_on_binary_convs():
    scheme = B.get("siman")
    model = bnas.build_model("latest_cell_zeroise", layers=5, init_channels=8, binarizer=scheme)
    binary = {id(p) for m in model.modules() if isinstance(m, SiMaNConv2d) for p in m.parameters()}
    assert binary
    seen = {}
    for group in scheme.param_groups(model, 5e-4):
        for p in group["params"]:
            assert id(p) not in seen
            seen[id(p)] = group["weight_decay"]
    assert len(seen) == len(list(model.parameters()))
    for p in model.parameters():
        assert seen[id(p)] == (0.0 if id(p) in binary else 5e-4)


@pytest.mark.parametrize("hp, message", [
    ({"percent": 50.0}, r"\[0, 50\)"),
    ({"percent": -1.0}, r"\[0, 50\)"),
    ({"percent": float("inf")}, "finite number"),
    ({"tau_min": 0.5}, "no hyper-parameter"),
])
def test_validation(hp, message):
    with pytest.raises(BnasError, match=message) as info:
        B.get("siman", **hp)
    assert "\n" not in str(info.value)
