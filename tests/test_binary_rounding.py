"""Binary convolutions compute ``conv(sign(x), sign(W)) * alpha``: the convolution of the +-1
(or 0) tensors is an exact integer in float32, whatever the kernel's order of summation, and the
layer's output is that integer times the per-channel scale, rounded once. So two correct
implementations (the float model and a popcount engine; channels-first and channels-last;
the lean and the reference training paths) agree bit for bit."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bnas.binarize import get as get_binarizer
from bnas.ops import BinConvOp
from bnas.ops.lean import set_lean

SCHEMES = ["plain", "rbnn", "recu", "siman", "bop", "bop2"]
# 37 input channels (no power of two), 3x3 with padding (borders meet the zero padding), and
# a strided, dilated geometry as bin_dil_conv uses.
GEOMETRIES = [dict(stride=1, padding=1, dilation=1), dict(stride=2, padding=2, dilation=2)]


def layer_and_input(scheme: str, geometry: dict, seed: int) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    layer = get_binarizer(scheme).conv(37, 24, 3, **geometry)
    with torch.no_grad():
        layer.weight.normal_()
        for name in ("alpha", "gain"):
            if hasattr(layer, name):  # scales of both signs and many magnitudes
                getattr(layer, name).copy_(torch.randn_like(getattr(layer, name)) * 3.7)
    x = torch.randn(3, 37, 11, 11)
    x[0, :, 2, 3] = 0.0  # sign(0) = 0 in schemes that use torch.sign
    return layer, x


def record(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Keep the binary input and weight of ``layer``'s next forward pass (SiMaN's weight may
    change at every call) in the returned dict."""
    used: dict[str, torch.Tensor] = {}
    for name in ("binarize_input", "binary_weight"):
        method = getattr(layer, name)
        setattr(layer, name, lambda *a, name=name, method=method: used.setdefault(name, method(*a)))
    return used


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=["3x3", "strided-dilated"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_output_is_the_scale_times_an_exact_integer_rounded_once(scheme, geometry, training):
    layer, x = layer_and_input(scheme, geometry, seed=SCHEMES.index(scheme))
    layer.train(training)
    used = record(layer)
    with torch.no_grad():
        y = layer(x)
        xb, sign, scale = used["binarize_input"], used["binary_weight"], layer.weight_scale()
    assert set(sign.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert set(xb.unique().tolist()) <= {-1.0, 0.0, 1.0}
    pre = F.conv2d(xb, sign, None, **geometry)
    exact = F.conv2d(xb.double(), sign.double(), None, **geometry)  # integers, exact in float64
    assert torch.equal(exact, exact.round()) and exact.abs().max() > 50
    assert torch.equal(pre.double(), exact)
    if scale is None:
        assert scheme in ("bop", "bop2")
        expected = exact.float()
    else:
        assert scale.shape == (24,) and scale.dtype == torch.float32
        # alpha (24 bits) times an integer below 2**24: exact in float64, then one rounding.
        expected = (exact * scale.double().view(1, -1, 1, 1)).float()
    assert torch.equal(y, expected)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_channels_last_gives_the_same_bits(scheme):
    layer, x = layer_and_input(scheme, GEOMETRIES[0], seed=7)
    layer.eval().to(memory_format=torch.channels_last)
    with torch.no_grad():
        y = layer(x)
        y_cl = layer(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(y_cl, y)


@pytest.mark.parametrize("scheme", ["plain", "recu", "siman"])
def test_lean_training_path_gives_the_same_bits_in_float32(scheme):
    torch.manual_seed(3)
    lean = BinConvOp(16, 16, 3, 1, 1, get_binarizer(scheme))
    with torch.no_grad():
        if hasattr(lean.conv, "alpha"):
            lean.conv.alpha.copy_(torch.randn_like(lean.conv.alpha))
    reference = copy.deepcopy(lean)
    set_lean(lean, True), set_lean(reference, False)
    x = torch.randn(4, 16, 9, 9)
    assert torch.equal(lean(x), reference(x))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_autocast_runs_in_the_low_precision_type(scheme):
    layer, x = layer_and_input(scheme, GEOMETRIES[0], seed=11)
    used = record(layer)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    scale = layer.weight_scale()
    exact = F.conv2d(used["binarize_input"].double(), used["binary_weight"].double(), None, padding=1)
    if scale is not None:
        exact = exact * scale.detach().double().view(1, -1, 1, 1)
    # bfloat16 keeps 8 significant bits: the integer and the scale each round once, and so
    # does their product.
    torch.testing.assert_close(y.double(), exact, rtol=3 * 2 ** -8, atol=0)
