"""RBNN: forward, gradients, schedule, rotation update and validation against hand formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import bnas.binarize as B
from bnas.binarize.rbnn import RBNNConv2d, random_orthogonal, rotation_shape
from bnas.errors import BnasError
from binarize_formulas import (GEOMETRIES, IN, KERNEL, OUT, assert_layer, conv, conv_input_grad,
                               conv_weight_grad, normalize, normalize_backward, run_layer, seeded)
from scheme_layers import schedule

SQRT2 = math.sqrt(2.0)


def curve(x: torch.Tensor, k: float, t: float) -> torch.Tensor:
    """RBNN's sign derivative ``k * max(0, sqrt(2) t - t^2 |x|)`` (Eq. 15)."""
    return k * torch.clamp(SQRT2 * t - t * t * x.abs(), min=0.0)


def make_layer(geometry: dict, epoch: int, epochs: int = 1000, theta=None, **hp) -> RBNNConv2d:
    scheme = B.get("rbnn", **hp)
    layer = scheme.conv(IN, OUT, KERNEL, **geometry).double()
    with torch.no_grad():
        layer.weight.copy_(seeded(OUT, IN, KERNEL, KERNEL, seed=1))
        layer.alpha.copy_(seeded(OUT, 1, 1, seed=2).abs() + 0.1)
        if theta is not None:
            layer.theta.copy_(theta)
    scheme.set_epoch(layer, epoch, epochs)
    return layer


def expected(layer: RBNNConv2d, x: torch.Tensor, g: torch.Tensor, geometry: dict, a32: bool):
    """Forward and all gradients of RBNN written out by hand."""
    w, alpha, theta = layer.weight.detach(), layer.alpha.detach(), layer.theta.detach()
    r1, r2 = layer.R1, layer.R2
    t, k = float(layer.t), float(layer.k)
    a, b = rotation_shape(IN * KERNEL * KERNEL)
    # forward
    w2 = normalize(w, eps=0.0)
    rw = (r1.t() @ w2.reshape(OUT, a, b) @ r2).reshape(w.shape)
    s = torch.sin(theta).abs()
    w3 = w2 + s * (rw - w2)
    bw = torch.sign(w3)
    a2 = normalize(x, eps=0.0)
    ba = a2 if a32 else torch.sign(a2)
    core = conv(ba, bw, geometry)
    y = core * alpha
    # backward
    d_alpha = (g * core).sum(dim=(0, 2, 3)).view_as(alpha)
    gy = g * alpha
    d_ba = conv_input_grad(x.shape, bw, gy, geometry)
    d_a2 = d_ba if a32 else d_ba * curve(a2, 1.0, max(t, 1.0))
    d_x = normalize_backward(x, d_a2, eps=0.0)
    d_w3 = conv_weight_grad(ba, w.shape, gy, geometry) * curve(w3, k, t)
    # d w3 / d theta = sign(sin theta) cos theta (rw - w2); d w3 / d w2 = 1 - |sin theta|
    d_theta = (d_w3 * (rw - w2)).sum(dim=(1, 2, 3), keepdim=True) \
        * torch.sign(torch.sin(theta)) * torch.cos(theta)
    d_w = normalize_backward(w, d_w3 * (1.0 - s), eps=0.0)
    return y, d_x, d_w, d_alpha, d_theta


@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
@pytest.mark.parametrize("epoch", [600, 850])  # t = 0.63 (k > 1, t' = 1) and t = 3.55 (k = 1)
@pytest.mark.parametrize("a32", [False, True])
def test_forward_and_gradients_match_formulas(geometry, epoch, a32):
    theta = seeded(OUT, 1, 1, 1, seed=3)  # away from pi/2, so the latent weight learns
    layer = make_layer(geometry, epoch, theta=theta, a32=a32)
    x, g_shape = seeded(2, IN, 9, 9, seed=4), layer(torch.zeros(2, IN, 9, 9, dtype=torch.float64))
    g = seeded(*g_shape.shape, seed=5)
    got = run_layer(layer, x, g)
    y_ref, d_x_ref, d_w_ref, d_alpha_ref, d_theta_ref = expected(layer, x, g, geometry, a32)
    assert_layer(layer, got, (y_ref, d_x_ref), weight=d_w_ref, alpha=d_alpha_ref,
                 theta=d_theta_ref)
    assert layer.weight.grad.abs().sum() > 0 and layer.theta.grad.abs().sum() > 0
    assert layer.input_precision == (32 if a32 else 1)


def test_initial_state_and_zero_weight_gradient_at_right_angle():
    layer = B.get("rbnn").conv(IN, OUT, KERNEL, padding=1)
    torch.testing.assert_close(layer.theta, torch.full((OUT, 1, 1, 1), math.pi / 2))
    torch.testing.assert_close(layer.alpha.detach(),
                               layer.weight.detach().abs().mean(dim=(1, 2, 3)).view(OUT, 1, 1))
    assert float(layer.t) == pytest.approx(1e-2) and float(layer.k) == pytest.approx(100.0)
    layer(torch.randn(2, IN, 6, 6)).sum().backward()
    # |sin(pi/2)| = 1: the blended weight is the detached rotation, so W gets exactly zero.
    assert torch.count_nonzero(layer.weight.grad) == 0
    assert layer.alpha.grad.abs().sum() > 0 and layer.theta.grad.abs().sum() > 0


def test_schedule():
    ts, at = (0.01, 0.31623, 9.93116), (0, 500, 999)
    assert schedule("rbnn", "t", 1000, at) == [pytest.approx([t, t], abs=5e-6) for t in ts]
    assert schedule("rbnn", "k", 1000, at) == [pytest.approx([max(1.0 / t, 1.0)] * 2, rel=1e-4)
                                               for t in ts]


def rotation_by_hand(x: np.ndarray, r1: np.ndarray, r2: np.ndarray):
    """Three alternating steps of RBNN's bi-rotation (Eqs. 7-10), sums written as loops."""
    for _ in range(3):
        bb = np.sign(np.stack([r1.T @ xi @ r2 for xi in x]))
        d1 = sum(bi @ r2.T @ xi.T for bi, xi in zip(bb, x))
        u, _, vh = np.linalg.svd(d1)
        r1 = vh.T @ u.T
        d2 = sum(xi.T @ r1 @ bi for xi, bi in zip(x, bb))
        u, _, vh = np.linalg.svd(d2)
        r2 = u @ vh
    return r1, r2


def test_rotation_update_matches_formula_and_is_in_place():
    scheme = B.get("rbnn")
    layer = make_layer(GEOMETRIES["plain"], 0)
    model = torch.nn.Sequential(layer)
    a, b = layer.rows, layer.cols
    x = normalize(layer.weight.detach(), eps=0.0).reshape(OUT, a, b).numpy()
    r1_ref, r2_ref = rotation_by_hand(x, layer.R1.numpy(), layer.R2.numpy())
    ptr1, ptr2 = layer.R1.data_ptr(), layer.R2.data_ptr()
    scheme.before_batch(model, 0, 0)
    assert (layer.R1.data_ptr(), layer.R2.data_ptr()) == (ptr1, ptr2)
    np.testing.assert_allclose(layer.R1.numpy(), r1_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(layer.R2.numpy(), r2_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(r1_ref.T @ r1_ref, np.eye(a), atol=1e-10)
    np.testing.assert_allclose(r2_ref.T @ r2_ref, np.eye(b), atol=1e-10)
    assert "R1" in layer.state_dict() and "R2" in layer.state_dict()


def test_rotation_update_timing():
    scheme = B.get("rbnn", rotation_update=2)
    model = torch.nn.Sequential(scheme.conv(IN, OUT, KERNEL))
    layer = model[0]

    def snapshot():
        return layer.R1.clone(), layer.R2.clone()

    for epoch, batch, updates in [(1, 0, False), (2, 1, False), (2, 0, True), (4, 0, True)]:
        before = snapshot()
        scheme.before_batch(model, epoch, batch)
        changed = not all(torch.equal(p, q) for p, q in zip(before, snapshot()))
        assert changed == updates, (epoch, batch)


def test_rotation_shape_and_orthogonal_draw():
    assert rotation_shape(54) == (6, 9)
    assert rotation_shape(36) == (6, 6)
    assert rotation_shape(7) == (1, 7)
    assert rotation_shape(1) == (1, 1)
    torch.manual_seed(3)
    q = random_orthogonal(5)
    torch.manual_seed(3)
    assert torch.equal(q, random_orthogonal(5))
    torch.testing.assert_close(q.t() @ q, torch.eye(5), atol=1e-6, rtol=0)


@pytest.mark.parametrize("hp, message", [
    ({"Tmin": 10.0, "Tmax": 1.0}, "must not exceed"),
    ({"Tmin": 0.0}, "positive"),
    ({"Tmax": -1.0}, "positive"),
    ({"Tmin": float("nan")}, "finite number"),
    ({"Tmin": "0.1"}, "finite number"),
    ({"rotation_update": 0}, "positive integer"),
    ({"rotation_update": 1.5}, "positive integer"),
    ({"rotation_update": True}, "positive integer"),
    ({"a32": 1}, "true or false"),
    ({"tau": 0.5}, "no hyper-parameter"),
])
def test_validation(hp, message):
    with pytest.raises(BnasError, match=message) as info:
        B.get("rbnn", **hp)
    assert "\n" not in str(info.value)
