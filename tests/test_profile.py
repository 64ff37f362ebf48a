"""bnas.profiling: parameters, FLOPs, BOPs and packed size against counts worked out by hand."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import bnas
from bnas import binarize
from bnas.errors import BnasError
from bnas.genotype import names as genotype_names
from bnas.profiling import LayerProfile, Profile, profile

PLAIN_CONV = binarize.get("plain").conv_class


class W1A32Conv(PLAIN_CONV):
    """Binary weights fed real-valued activations (an a32 layer)."""

    input_precision = 32


def tiny() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),                  # real, 32x32
        nn.BatchNorm2d(8),
        binarize.get("plain").conv(8, 16, 3, stride=2, padding=1),  # binary, 16x16
        nn.Flatten(),
        nn.Linear(16 * 16 * 16, 10),                                 # real
    )


def test_tiny_model_by_hand():
    p = profile(tiny(), (3, 32, 32))
    real_conv_macs = (8 * 32 * 32) * (3 * 3 * 3)          # output elements x dot-product length
    binary_conv_macs = (16 * 16 * 16) * (8 * 3 * 3)
    linear_macs = 10 * 4096
    assert p.flops == real_conv_macs + linear_macs == 262_144
    assert p.bops == binary_conv_macs == 294_912
    assert p.ops == 262_144 + 294_912 / 64
    params = {"conv": 8 * 3 * 9, "bn": 2 * 8, "bconv": 16 * 8 * 9, "linear": 4096 * 10 + 10}
    assert p.params == sum(params.values()) == 42_354
    assert p.binary_params == params["bconv"]
    assert p.real_params == 42_354 - 1_152
    assert p.size_bytes == 1_152 / 8 + (42_354 - 1_152) * 4
    assert p.float_size_bytes == 42_354 * 4
    assert p.input_size == (3, 32, 32) and p.output_shape == (10,)
    assert [(l.name, l.type, l.output_shape, l.params, l.binary, l.macs) for l in p.layers] == [
        ("0", "Conv2d", (8, 32, 32), 216, False, real_conv_macs),
        ("2", "PlainConv2d", (16, 16, 16), 1_152, True, binary_conv_macs),
        ("4", "Linear", (10,), 40_970, False, linear_macs),
    ]


def test_binary_weights_on_real_inputs_count_as_flops():
    """larq's rule: a MAC is binary only when both operands are 1-bit."""
    model = nn.Sequential(W1A32Conv(4, 6, 3, padding=1))
    p = profile(model, (4, 5, 5))
    assert p.bops == 0
    assert p.flops == (6 * 5 * 5) * (4 * 9)
    assert p.binary_params == 6 * 4 * 9          # the weights are still stored in 1 bit
    (layer,) = p.layers
    assert (layer.weight_bits, layer.input_bits, layer.binary) == (1, 32, False)


def test_grouped_dilated_strided_conv_macs():
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=2, dilation=2, groups=4, bias=True)
    p = profile(conv, (8, 9, 9))
    out = (9 + 2 * 2 - 2 * (3 - 1) - 1) // 2 + 1      # 5
    assert p.output_shape == (12, out, out)
    assert p.flops == 12 * out * out * (8 // 4) * 9
    assert p.params == 12 * 2 * 9 + 12 and p.binary_params == 0
    assert p.layers[0].name == "Conv2d"


def test_module_called_twice_counts_macs_twice_params_once():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1, bias=False)

        def forward(self, x):
            return self.conv(self.conv(x))

    p = profile(Twice(), (2, 3, 3))
    assert p.flops == 2 * (2 * 3 * 3) * 2
    assert p.params == 4 and len(p.layers) == 1


def test_modes_restored_and_model_untouched_otherwise():
    model = tiny().train()
    model[1].eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("1.")}
    profile(model, (3, 32, 32))
    assert model.training and model[0].training and not model[1].training
    for k, v in before.items():                  # batch norm statistics were not updated
        assert torch.equal(model.state_dict()[k], v)
    assert all(not m._forward_hooks for m in model.modules())


def test_bad_input_size():
    with pytest.raises(BnasError, match="input size"):
        profile(tiny(), (3, -1, 32))
    with pytest.raises(BnasError, match="input size"):
        profile(tiny())                           # a bare module has no dataset


def test_to_dict_and_text():
    p = profile(tiny(), (3, 32, 32))
    data = json.loads(json.dumps(p.to_dict()))
    assert data["bops"] == p.bops and data["ops"] == p.ops and len(data["layers"]) == 3
    assert data["layers"][1] == LayerProfile("2", "PlainConv2d", (16, 16, 16), 1152, 1, 1,
                                             294_912).to_dict()
    assert "42,354" in p.summary() and "FLOPs + BOPs/64" in p.summary()
    table = p.table().splitlines()
    assert table[0].split() == ["layer", "type", "output", "params", "binary", "MACs"]
    assert table[3].split() == ["2", "PlainConv2d", "16x16x16", "1,152", "yes", "294,912"]


def bnas_a_by_hand() -> dict[str, int]:
    """BNAS-A's counts from the paper's description: CIFAR stem, 20 cells, C=36,
    reductions at cells 6 and 13, binary preprocessing, cell residuals, linear classifier.
    Its normal cell has two binary 3x3 convolutions (bin_dil_conv_3x3 on c_{k-2},
    bin_conv_3x3 on c_{k-1}); its reduction cell only max pools and zeroise."""
    counts = {"params": 0, "binary_params": 0, "flops": 0, "bops": 0}

    def conv(c_in: int, c_out: int, k: int, hw: int, binary: bool, bias: bool = False) -> None:
        weights = c_in * c_out * k * k
        counts["params"] += weights + (c_out if bias else 0)
        if binary:
            counts["binary_params"] += weights
            counts["bops"] += weights * hw * hw
        else:
            counts["flops"] += weights * hw * hw

    def bn(c: int) -> None:
        counts["params"] += 2 * c

    C, L, hw = 36, 20, 32
    bn(3)
    conv(3, 3 * C, 3, hw, binary=False)                      # stem: BN -> conv -> ReLU
    c_pp = c_p = 3 * C
    c, reduction_prev = C, False
    for i in range(L):
        reduction = i in (L // 3, 2 * L // 3)
        c = 2 * c if reduction else c
        if reduction_prev:
            conv(c_pp, c, 3, hw, binary=True)                # BN(affine=False): no parameters
        else:
            bn(c_pp)
            conv(c_pp, c, 1, hw, binary=True)
        bn(c_p)
        conv(c_p, c, 1, hw, binary=True)
        if reduction:
            if i > 0:                                        # residual: BN -> conv 2x2/2 + bias
                bn(c_p)
                conv(c_p, 4 * c, 2, hw // 2, binary=False, bias=True)
            hw //= 2
        else:
            for _ in range(2):
                bn(c)
                conv(c, c, 3, hw, binary=True)
        c_pp, c_p, reduction_prev = c_p, 4 * c, reduction
    counts["params"] += c_p * 10 + 10
    counts["flops"] += c_p * 10
    return counts


@pytest.fixture(scope="module")
def bnas_a() -> Profile:
    return bnas.profile(bnas.build_model(config="bnas-a"))


def test_bnas_a_matches_hand_count(bnas_a):
    hand = bnas_a_by_hand()
    assert hand["params"] == 5_578_252                       # the published size
    assert bnas_a.params == 5_578_252
    assert bnas_a.binary_params == hand["binary_params"]
    assert bnas_a.flops == hand["flops"]
    assert bnas_a.bops == hand["bops"]
    assert bnas_a.input_size == (3, 32, 32) and bnas_a.output_shape == (10,)
    assert bnas_a.size_bytes == hand["binary_params"] / 8 + (5_578_252 - hand["binary_params"]) * 4


@pytest.mark.skipif("resnet20_1w1a" not in genotype_names(), reason="no resnet20_1w1a genotype")
def test_resnet20_1w1a_by_hand():
    p = bnas.profile(bnas.build_model("resnet20_1w1a"))
    bops = 0
    for c_in, c_out, hw in ((16, 16, 32), (16, 32, 16), (32, 64, 8)):
        bops += c_out * c_in * 9 * hw * hw                   # first conv of the stage
        bops += 5 * c_out * c_out * 9 * hw * hw              # the other five
    assert p.bops == bops
    assert p.flops == 16 * 3 * 9 * 32 * 32 + 64 * 10         # real stem conv and classifier
    binary = (16 * 16 * 9 * 6 + 32 * 16 * 9 + 32 * 32 * 9 * 5 + 64 * 32 * 9 + 64 * 64 * 9 * 5)
    assert p.binary_params == binary
    assert p.params == 269_850
