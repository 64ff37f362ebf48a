"""ReCU: forward, gradients, tau schedule, weight-decay groups and validation, checked against
hand-written formulas."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bnas
import bnas.binarize as B
from bnas.binarize.recu import ReCUConv2d
from bnas.errors import BnasError
from binarize_formulas import (GEOMETRIES, IN, assert_layer, bireal_slope, conv,
                               conv_input_grad, conv_weight_grad, normalize, normalize_backward,
                               run_layer, seeded)
from scheme_layers import alpha_layer

SCALE = 2.0 * math.sqrt(2.0)


def make_layer(geometry: dict, epoch: int, epochs: int = 600) -> ReCUConv2d:
    return alpha_layer("recu", geometry, epoch, epochs)


def expected(layer: ReCUConv2d, x: torch.Tensor, g: torch.Tensor, geometry: dict, training: bool):
    """ReCU's forward and gradients written out by hand."""
    w, alpha, tau = layer.weight.detach(), layer.alpha.detach(), float(layer.tau)
    # weight: w1 = 2 sqrt(2) (W - m) / sqrt(var + 1e-5); Q = -mean|w1| ln(2 - 2 tau)
    w1 = SCALE * normalize(w, eps=1e-5)
    q = -w1.abs().mean() * math.log(2.0 - 2.0 * tau)
    bw = torch.sign(torch.clamp(w1, -q, q))
    # activation: train a / sqrt(var + 1e-5) per sample, eval raw
    a0 = normalize(x, eps=1e-5, center=False) if training else x
    ba = torch.sign(a0)
    core = conv(ba, bw, geometry)
    y = core * alpha
    d_alpha = (g * core).sum(dim=(0, 2, 3)).view_as(alpha)
    gy = g * alpha
    d_a0 = conv_input_grad(x.shape, bw, gy, geometry) * bireal_slope(a0)
    d_x = normalize_backward(x, d_a0, eps=1e-5, center=False) if training else d_a0
    d_w1 = conv_weight_grad(ba, w.shape, gy, geometry) * (w1.abs() <= q)  # identity STE, clamp
    d_w = normalize_backward(w, SCALE * d_w1, eps=1e-5)
    return y, d_x, d_w, d_alpha, q


@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_forward_and_gradients_match_formulas(geometry, training):
    layer = make_layer(geometry, epoch=0)  # tau = 0.85: Q clamps a good share of the weights
    layer.train(training)
    x = seeded(2, IN, 9, 9, seed=4) * 0.7
    g = seeded(*layer(x).shape, seed=5)
    got = run_layer(layer, x, g)
    y_ref, d_x_ref, d_w_ref, d_alpha_ref, q = expected(layer, x, g, geometry, training)
    assert_layer(layer, got, (y_ref, d_x_ref), weight=d_w_ref, alpha=d_alpha_ref)
    w1 = SCALE * normalize(layer.weight.detach(), eps=1e-5)
    assert 0 < int((w1.abs() > q).sum()) < w1.numel()  # both sides of the clamp are exercised


def test_alpha_initialisation():
    torch.manual_seed(7)
    layer = B.get("recu").conv(16, 32, 3)
    assert layer.alpha.shape == (32, 1, 1)
    alpha = layer.alpha.detach()
    assert float(alpha.min()) >= 0.0 and float(alpha.max()) < 1.0
    assert alpha.std() > 0.1  # uniform, not a constant
    assert float(layer.tau) == pytest.approx(0.85)


def test_schedule():
    scheme = B.get("recu")
    model = nn.Sequential(scheme.conv(4, 4, 3), scheme.conv(4, 8, 1))
    for epoch, tau in [(0, 0.85), (300, 0.90286), (599, 0.98963)]:
        scheme.set_epoch(model, epoch, 600)
        for layer in model:
            assert float(layer.tau) == pytest.approx(tau, abs=1e-5)
    scheme.set_epoch(model, 600, 600)
    assert float(model[0].tau) == pytest.approx(0.99, abs=1e-6)


def _group_of(groups: list[dict]) -> dict[int, float]:
    out: dict[int, float] = {}
    for group in groups:
        for p in group["params"]:
            assert id(p) not in out, "a parameter is in two groups"
            out[id(p)] = group["weight_decay"]
    return out


def test_param_groups_imagenet_decays_only_conv_fc_and_alpha():
    scheme = B.get("recu")
    model = bnas.build_model("latest_cell", dataset="imagenet", layers=3, init_channels=8,
                             binarizer=scheme)
    decay = _group_of(scheme.param_groups(model, 1e-4, "imagenet"))
    assert set(decay) == {id(p) for p in model.parameters()}
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        owner = modules[name.rpartition(".")[0]]
        downsample = ".residual." in f".{name}"
        wanted = 1e-4 if isinstance(owner, (nn.Conv2d, nn.Linear)) and not downsample else 0.0
        assert decay[id(p)] == wanted, name
    names = {n for n, p in model.named_parameters() if decay[id(p)] > 0}
    assert "classifier.weight" in names and "classifier.bias" in names
    assert any(n.endswith("conv.alpha") for n in names)
    assert not any(".bn." in n or ".residual." in n for n in names)


def test_param_groups_cifar_decays_everything():
    scheme = B.get("recu")
    model = bnas.build_model("latest_cell_zeroise", layers=5, init_channels=8, binarizer=scheme)
    for dataset in ("cifar", "cifar10"):
        decay = _group_of(scheme.param_groups(model, 5e-4, dataset))
        assert set(decay.values()) == {5e-4}
        assert len(decay) == len(list(model.parameters()))


@pytest.mark.parametrize("hp, message", [
    ({"tau_min": 0.95, "tau_max": 0.9}, "must not exceed"),
    ({"tau_max": 1.0}, "strictly between 0 and 1"),
    ({"tau_min": 0.0}, "strictly between 0 and 1"),
    ({"tau_min": -0.5}, "strictly between 0 and 1"),
    ({"tau_max": None}, "finite number"),
    ({"percent": 5}, "no hyper-parameter"),
])
def test_validation(hp, message):
    with pytest.raises(BnasError, match=message) as info:
        B.get("recu", **hp)
    assert "\n" not in str(info.value)
