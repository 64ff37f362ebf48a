"""The hand-designed 1w1a networks (fixed genotypes): sizes, structure, wiring, initialisation."""
from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnas import binarize
from bnas.binarize.base import BinaryConv2d
from bnas.errors import BnasError
from bnas.genotype import from_json, load
from bnas.model import build_model
from bnas.families import FAMILIES, validate_network
from bnas.model.fixed import BasicBlock, BiRealBlock, ZeroPadShortcut, build_fixed

# (genotype, dataset) -> parameters with the "plain" binarizer (no per-layer extras), counted
# independently from the architectures' layer shapes.
PARAMS = {
    ("resnet20_1w1a", "cifar10"): 269_850,
    ("resnet20_bireal_1w1a", "cifar10"): 269_850,
    ("resnet18_1w1a", "cifar10"): 11_174_986,
    ("resnet34_1w1a", "cifar10"): 21_283_146,
    ("vgg_small_1w1a", "cifar10"): 4_660_106,
    ("resnet18_1w1a", "imagenet"): 11_690_536,
    ("resnet34_1w1a", "imagenet"): 21_798_696,
}
CASES = list(PARAMS)
INPUT_SIZE = {"cifar10": 32, "imagenet": 224}

# (genotype, dataset) -> binary conv kernel sizes, real conv kernel sizes (sorted counts)
CONVS = {
    ("resnet20_1w1a", "cifar10"): ({3: 18}, {3: 1}),
    ("resnet20_bireal_1w1a", "cifar10"): ({3: 18}, {3: 1}),
    ("resnet18_1w1a", "cifar10"): ({3: 16, 1: 3}, {3: 1}),
    ("resnet34_1w1a", "cifar10"): ({3: 32, 1: 3}, {3: 1}),
    ("vgg_small_1w1a", "cifar10"): ({3: 5}, {3: 1}),
    ("resnet18_1w1a", "imagenet"): ({3: 16}, {7: 1, 1: 3}),
    ("resnet34_1w1a", "imagenet"): ({3: 32}, {7: 1, 1: 3}),
}


def _build(name: str, dataset: str, **kw) -> nn.Module:
    return build_model(name, dataset=dataset, binarizer="plain", **kw)


def _kernel_counts(convs) -> dict[int, int]:
    counts: dict[int, int] = {}
    for m in convs:
        counts[m.kernel_size[0]] = counts.get(m.kernel_size[0], 0) + 1
    return counts


@pytest.mark.parametrize("name,dataset", CASES)
def test_parameter_counts(name, dataset):
    model = _build(name, dataset)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name, dataset]


@pytest.mark.parametrize("name,dataset", CASES)
def test_forward_backward_every_parameter_learns(name, dataset):
    model = _build(name, dataset).train()
    size = INPUT_SIZE[dataset]
    out = model(torch.randn(2, 3, size, size))
    n_classes = 1000 if dataset == "imagenet" else 10
    assert out.shape == (2, n_classes)
    F.cross_entropy(out, torch.tensor([0, 1])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name,dataset", CASES)
def test_binary_and_real_convolutions(name, dataset):
    model = _build(name, dataset)
    binary = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    real = [m for m in model.modules()
            if isinstance(m, nn.Conv2d) and not isinstance(m, BinaryConv2d)]
    expect_binary, expect_real = CONVS[name, dataset]
    assert _kernel_counts(binary) == expect_binary
    assert _kernel_counts(real) == expect_real
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert not isinstance(first_conv, BinaryConv2d) and first_conv.in_channels == 3
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0] is model.classifier


def test_resnet_blocks_and_shortcuts():
    def blocks(model, cls):
        return [m for m in model.modules() if isinstance(m, cls)]

    r20 = _build("resnet20_1w1a", "cifar10")
    assert len(blocks(r20, BasicBlock)) == 9 and not blocks(r20, BiRealBlock)
    assert len(blocks(r20, ZeroPadShortcut)) == 2
    assert [type(m) for m in r20.stem] == [nn.Conv2d, nn.BatchNorm2d, nn.Hardtanh]
    bireal = _build("resnet20_bireal_1w1a", "cifar10")
    assert len(blocks(bireal, BiRealBlock)) == 9 and not blocks(bireal, BasicBlock)
    r18 = _build("resnet18_1w1a", "cifar10")
    assert len(blocks(r18, BasicBlock)) == 8
    assert [type(m) for m in r18.stem] == [nn.Conv2d, nn.BatchNorm2d]  # no activation
    r34 = _build("resnet34_1w1a", "imagenet")
    assert len(blocks(r34, BiRealBlock)) == 16
    assert [type(m) for m in r34.stem] == [nn.Conv2d, nn.BatchNorm2d, nn.Hardtanh, nn.MaxPool2d]
    assert [len(stage) for stage in r34.stages] == [3, 4, 6, 3]
    assert isinstance(r34.bn, nn.BatchNorm1d) and r34.classifier.in_features == 512


def test_vgg_small_layout():
    model = _build("vgg_small_1w1a", "cifar10")
    kinds = [type(m).__name__ for m in model.features]
    conv, bn, act, pool = "Conv2d", "BatchNorm2d", "Hardtanh", "MaxPool2d"
    binary = type(model.features[3]).__name__
    assert kinds == [conv, bn, act,
                     binary, pool, bn, act, binary, bn, act, binary, pool, bn, act,
                     binary, bn, act, binary, pool, bn, act]
    assert model.classifier.in_features == 512 * 4 * 4
    x = torch.randn(2, 512, 4, 4)
    assert torch.equal(model.pool(x), x)  # the identity at CIFAR resolution


def test_zero_pad_shortcut_values():
    shortcut = ZeroPadShortcut(16, 32, stride=2)
    x = torch.randn(2, 16, 8, 8)
    expected = torch.zeros(2, 32, 4, 4)
    for c in range(16):
        for i in range(4):
            for j in range(4):
                expected[:, c + 8, i, j] = x[:, c, 2 * i, 2 * j]
    assert torch.equal(shortcut(x), expected)
    assert not list(shortcut.parameters())


def _set_bn_stats(block: nn.Module) -> None:
    for bn in (block.bn1, block.bn2):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.normal_()
        bn.bias.data.normal_()


@pytest.mark.parametrize("downsample", [False, True])
@pytest.mark.parametrize("cls", [BasicBlock, BiRealBlock])
def test_block_wiring(cls, downsample):
    c_in, stride = (8, 2) if downsample else (16, 1)
    block = cls(c_in, 16, stride, binarize.get("plain"), "zero_pad").eval()
    _set_bn_stats(block)
    x = torch.randn(2, c_in, 8, 8)
    if downsample:
        sc = torch.zeros(2, 16, 4, 4)
        sc[:, 4:12] = x[:, :, ::2, ::2]
    else:
        sc = x

    def bn(m, y):  # eval-mode BatchNorm, by hand
        mean, var = m.running_mean[:, None, None], m.running_var[:, None, None]
        return (y - mean) / torch.sqrt(var + m.eps) * m.weight[:, None, None] + m.bias[:, None, None]

    def act(y):
        return y.clamp(-1.0, 1.0)

    with torch.no_grad():
        if cls is BasicBlock:
            h = act(bn(block.bn1, block.conv1(x)))
            expected = act(bn(block.bn2, block.conv2(h)) + sc)
        else:
            h = act(bn(block.bn1, block.conv1(x)) + sc)
            expected = act(bn(block.bn2, block.conv2(h)) + h)
        torch.testing.assert_close(block(x), expected)


def _std_close(w: torch.Tensor, std: float, rel: float) -> None:
    assert abs(w.std().item() / std - 1.0) < rel, (w.std().item(), std)


@pytest.mark.parametrize("name", ["resnet20_1w1a", "resnet20_bireal_1w1a"])
def test_init_resnet20(name):
    model = _build(name, "cifar10")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1e-8) and torch.all(m.bias == 0)
    assert torch.all(model.bn.weight == 1.0)  # BatchNorm1d keeps PyTorch's init
    conv = model.stages[2][2].conv2  # 64x64x3x3: kaiming normal, std sqrt(2 / fan_in)
    _std_close(conv.weight, math.sqrt(2.0 / (64 * 9)), 0.03)
    _std_close(model.classifier.weight, math.sqrt(2.0 / 64), 0.15)


def test_init_imagenet_resnet():
    model = _build("resnet18_1w1a", "imagenet")
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 16 + 3  # stem, two per block, three downsamples
    for m in bns:
        assert torch.all(m.weight == 1e-8) and torch.all(m.bias == 0)
    _std_close(model.stages[3][1].conv2.weight, math.sqrt(2.0 / (512 * 9)), 0.03)
    _std_close(model.stem[0].weight, math.sqrt(2.0 / (3 * 49)), 0.05)
    # the classifier keeps PyTorch's default: uniform within 1/sqrt(fan_in)
    assert model.classifier.weight.abs().max() <= 1.0 / math.sqrt(512)


def test_init_cifar_resnet18_is_pytorch_default():
    model = _build("resnet18_1w1a", "cifar10")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1.0) and torch.all(m.bias == 0)
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            assert m.weight.abs().max() <= 1.0 / math.sqrt(fan_in)


def test_init_vgg_small():
    model = _build("vgg_small_1w1a", "cifar10")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    _std_close(convs[-1].weight, math.sqrt(2.0 / (9 * 512)), 0.03)
    _std_close(convs[0].weight, math.sqrt(2.0 / (9 * 128)), 0.05)
    _std_close(model.classifier.weight, 0.01, 0.03)
    assert torch.all(model.classifier.bias == 0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1.0) and torch.all(m.bias == 0)


@pytest.mark.parametrize("scheme", binarize.names())
def test_every_binary_conv_comes_from_the_binarizer(scheme):
    binarizer = binarize.get(scheme)
    spec = load("resnet18_1w1a").network["cifar"]
    model = build_fixed(spec, 10, binarizer)
    binary = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    assert len(binary) == 19
    assert all(type(m) is binarizer.conv_class for m in binary)


def test_style_is_chosen_by_dataset():
    with pytest.raises(BnasError, match="no imagenet-style network"):
        _build("resnet20_1w1a", "imagenet")
    assert _build("resnet20_1w1a", "cifar100").classifier.out_features == 100


SPEC = {"family": "resnet", "stem": "conv3x3_act", "block": "basic", "depths": [1, 1],
        "widths": [8, 16], "shortcut": "zero_pad", "init": "default"}


def test_validate_rejects_unknown_keyword():
    with pytest.raises(BnasError, match="no keyword 'blocks'"):
        validate_network({**SPEC, "blocks": 3}, "g")
    with pytest.raises(BnasError, match="no keyword 'num_classes'"):
        validate_network({**SPEC, "num_classes": 3}, "g")
    doc = {"format": 1, "kind": "fixed", "network": {"cifar": {**SPEC, "width": 2}}}
    with pytest.raises(BnasError, match="network 'cifar'.*no keyword 'width'"):
        from_json(doc, "g.json")


def test_validate_rejects_missing_keyword_and_unknown_family():
    spec = dict(SPEC)
    del spec["block"]
    with pytest.raises(BnasError, match="needs block"):
        validate_network(spec, "g")
    with pytest.raises(BnasError, match="unknown network family 'resnt'; did you mean resnet"):
        validate_network({**SPEC, "family": "resnt"}, "g")
    assert sorted(FAMILIES.names()) == ["binarynet", "birealnet", "resnet", "vgg_small", "xnornet"]


@pytest.mark.parametrize("name", FAMILIES.names())
def test_family_keywords_are_its_builders_parameters(name):
    """The torch-free declaration of a family's keywords (what genotypes are validated against)
    is its builder's signature: required keywords without defaults, optional ones with."""
    family = FAMILIES.get(name)
    params = inspect.signature(family.builder.resolve()).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    assert list(params) == ["num_classes", "binarizer", *family.keywords]
    assert [k for k in family.keywords if params[k].default is inspect.Parameter.empty] == \
        list(family.required)


@pytest.mark.parametrize("change,message", [
    ({"block": "bi_real"}, "unknown residual block 'bi_real'; did you mean bireal"),
    ({"shortcut": "pad"}, "unknown shortcut 'pad'"),
    ({"stem": "conv7x7"}, "unknown stem 'conv7x7'"),
    ({"init": "kaiming_uniform"}, "unknown initialisation 'kaiming_uniform'"),
    ({"depths": [1, 1, 1]}, "one entry per stage"),
    ({"widths": [8, 0]}, "'widths' must be a non-empty list of positive integers"),
    ({"widths": [16, 8]}, "cannot shrink channels"),
])
def test_bad_values_fail_at_build(change, message):
    with pytest.raises(BnasError, match=message):
        build_fixed({**SPEC, **change}, 10, binarize.get("plain"))


@pytest.mark.parametrize("cfg", [["M", 8], [8, "M", "M"], [8, 2.5], []])
def test_bad_vgg_cfg(cfg):
    with pytest.raises(BnasError, match="cfg"):
        build_fixed({"family": "vgg_small", "cfg": cfg, "init": "vgg"}, 10, binarize.get("plain"))


def test_small_custom_networks_run():
    resnet = build_fixed(SPEC, 5, binarize.get("plain"))
    assert resnet(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    vgg = build_fixed({"family": "vgg_small", "cfg": [8, 8, "M", 16, "M"], "init": "vgg"}, 5,
                      binarize.get("plain"))
    assert vgg.classifier.in_features == 16 * 8 * 8
    assert vgg(torch.randn(2, 3, 32, 32)).shape == (2, 5)
