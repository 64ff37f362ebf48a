"""Packed models equal their float models: every fixed genotype, every cell genotype (the
curated ones and a searched-style genotype with every operation of the bnas-skip space), every
scheme; real data (Fashion-MNIST) with identical top-1; the .bnx file round trip, its
size, and every kind of bad input."""
from __future__ import annotations

import copy
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bnas
from bnas.binarize.base import BinaryConv2d
from bnas.deploy import fileio, load, pack, save
from bnas.deploy.layers import PackedConv2d
from bnas.errors import BnasError
from bnas.genotype import from_json, load as load_genotype, names

SCHEMES = ["plain", "rbnn", "recu", "siman", "bop", "bop2"]
#: On the amx path, every convolution here runs as tile products.
pytestmark = pytest.mark.usefixtures("amx_everywhere")


def assert_same(y: torch.Tensor, z: torch.Tensor) -> None:
    """The float model computes conv(sign x, sign W) * alpha with one rounding, as the engine
    does: bit for bit."""
    assert torch.equal(y, z), (y - z).abs().max()
    assert torch.equal(y.argmax(1), z.argmax(1))


@torch.no_grad()
def calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The model with BatchNorm statistics of ``x`` (a forward in training mode), in eval mode."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # the statistics of x exactly
    model(x)
    return model.eval()


def check(model: nn.Module, x: torch.Tensor) -> nn.Module:
    calibrated(model, x)
    with torch.no_grad():
        expected = model(x)
        packed = pack(model)
        assert_same(expected, packed(x))
    return packed


FIXED = [(n, style) for n in names() if load_genotype(n).kind == "fixed"
         for style in load_genotype(n).network]


@pytest.mark.parametrize("arch, style", FIXED)
def test_every_fixed_genotype(arch, style):
    scheme = SCHEMES[FIXED.index((arch, style)) % len(SCHEMES)]
    dataset, size = ("imagenet", 64) if style == "imagenet" else ("cifar10", 32)
    size = 224 if arch == "xnornet_batch" else size  # its 6x6 valid convolution needs 224
    torch.manual_seed(0)
    model = bnas.build_model(arch, dataset=dataset, binarizer=scheme)
    check(model, torch.randn(2, 3, size, size))


EVERY_OP = {"format": 1, "kind": "cell", "name": "every_op", "space": "bnas-skip",
            "normal": {"nodes": [[["bin_conv_3x3", 0], ["skip", 1]],
                                 [["bin_dil_conv_3x3", 0], ["bin_conv_5x5", 2]],
                                 [["bin_dil_conv_5x5", 1], ["avg_pool_3x3", 3]],
                                 [["max_pool_3x3", 0], ["zeroise", 4]]],
                       "concat": [2, 3, 4, 5]},
            "reduce": {"nodes": [[["skip", 0], ["bin_conv_3x3", 1]],
                                 [["max_pool_3x3", 0], ["bin_dil_conv_5x5", 2]],
                                 [["avg_pool_3x3", 1], ["skip", 3]],
                                 [["bin_dil_conv_3x3", 0], ["bin_conv_5x5", 1]]],
                       "concat": [2, 3, 4, 5]}}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_on_a_genotype_with_every_operation(scheme):
    torch.manual_seed(1)
    model = bnas.build_model(from_json(EVERY_OP), binarizer=scheme, layers=4, init_channels=6)
    check(model, torch.randn(3, 3, 16, 16))


@pytest.mark.parametrize("scheme", ["plain", "rbnn"])
def test_every_kernel_path_runs_the_network_bit_for_bit(scheme, monkeypatch):
    """Each path this CPU runs (``BNAS_XNOR_ISA``), through the network's one-call operations
    and cells run in steps, with sign thresholds and per-sample means."""
    from bnas.deploy.cell import PackedEvalCell

    torch.manual_seed(5)
    model = bnas.build_model(from_json(EVERY_OP), binarizer=scheme, layers=3, init_channels=8)
    _, packed = on_every_path(model, torch.randn(2, 3, 16, 16), monkeypatch)
    assert all(type(c) is PackedEvalCell for c in packed.cells)


def on_every_path(model: nn.Module, x: torch.Tensor, monkeypatch) -> tuple[torch.Tensor, nn.Module]:
    """The calibrated float model's output on ``x``, checked equal to the packed model's on each
    kernel path this CPU runs, on one thread and on two (a cell step's convolutions then run
    side by side, one per thread), and the packed model (of the last path)."""
    from bnas.deploy.kernels import supported_isas

    calibrated(model, x)
    threads = torch.get_num_threads()
    with torch.no_grad():
        expected = model(x)
        for isa in supported_isas():
            monkeypatch.setenv("BNAS_XNOR_ISA", isa)
            packed = pack(model)
            for n in (1, 2):
                torch.set_num_threads(n)
                try:
                    assert_same(expected, packed(x))
                finally:
                    torch.set_num_threads(threads)
    return expected, packed


@pytest.mark.parametrize("arch, act", [("resnet20_1w1a", "hardtanh"),
                                       ("resnet20_bireal_1w1a", "prelu"),
                                       ("resnet20_1w1a", "relu")])
def test_residual_blocks_run_fused_on_every_path(arch, act, monkeypatch):
    """The residual blocks run each convolution's BatchNorm, shortcut addition and activation
    in its kernels' call (Basic and Bi-Real blocks, Hardtanh, PReLU and ReLU, shortcuts that
    pad channels), bit for bit on every path and thread count; a block with a convolution left
    in float runs layer by layer."""
    from bnas.deploy.blocks import _FusedBlock, fused

    torch.manual_seed(4)
    network = {**load_genotype(arch).network["cifar"], "act": act}
    model = bnas.build_model(from_json({"format": 1, "name": f"{arch}_{act}", "kind": "fixed",
                                        "network": {"cifar": network}}), binarizer="plain")
    _, packed = on_every_path(model, torch.randn(2, 3, 32, 32), monkeypatch)
    blocks = [m for m in packed.modules() if isinstance(m, _FusedBlock)]
    assert len(blocks) == 9 and all(fused(b) for b in blocks)
    blocks[0].conv2 = copy.deepcopy(model.stages[0][0].conv2)  # a float convolution: unfused
    blocks[0].reset()
    assert not fused(blocks[0])
    with torch.no_grad():
        assert_same(model(torch.ones(1, 3, 32, 32)), packed(torch.ones(1, 3, 32, 32)))


def balanced(n: int) -> torch.Tensor:
    """``n`` values +1, -1, 0, +1, -1, 0, ... with as many +1 as -1: their mean is exactly 0
    whatever the order of the sum."""
    t = torch.zeros(n)
    t[0:n // 3 * 3:3], t[1:n // 3 * 3:3] = 1.0, -1.0
    return t


@pytest.mark.parametrize("scheme", ["plain", "recu"])
def test_binary_weights_exactly_zero_run_exactly(scheme, tmp_path, monkeypatch):
    """Binary weights exactly 0 where the scheme's sign reads a weight exactly at its mean: the
    plain scheme centres each tap over the input channels, ReCU standardises each output
    channel; a tap (plain) or channel (ReCU) of balanced +-1 and 0 has mean exactly 0. The
    packed model equals the float model bit for bit on every kernel path, and after a save and
    load, which keeps the zeros."""
    from bnas.deploy.convert import binary_parts

    torch.manual_seed(4)
    model = bnas.build_model(from_json(EVERY_OP), binarizer=scheme, layers=3, init_channels=8)
    convs = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    with torch.no_grad():
        for i, conv in enumerate(convs):
            w = conv.weight
            if scheme == "plain":
                w[i % w.shape[0], :, 0, 0] = balanced(w.shape[1])
                w[-1, :, -1, -1] = balanced(w.shape[1])
            else:
                w[i % w.shape[0]] = balanced(w[0].numel()).view_as(w[0])
    assert all(binary_parts(conv)[2] is not None for conv in convs)
    x = torch.randn(2, 3, 16, 16)
    expected, packed = on_every_path(model, x, monkeypatch)
    loaded = load(save(packed, tmp_path / "zero.bnx"))
    with torch.no_grad():
        assert_same(expected, loaded(x))
    assert any(m.zero_weights is not None for m in loaded.modules()
               if isinstance(m, PackedConv2d))


CONFIGS = ["bnas-a", "bnas-d", "bnas-e", "bnas-f", "bnas-g", "bnas-h"]


@pytest.mark.parametrize("config", CONFIGS)
def test_the_configured_networks(config):
    torch.manual_seed(2)
    model = bnas.build_model(config=config, layers=3, init_channels=8,
                             binarizer=SCHEMES[CONFIGS.index(config)])
    size = 32 if config == "bnas-a" else 64
    check(model, torch.randn(2, 3, size, size))


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def fashion_mnist(count: int) -> torch.Tensor:
    """The first ``count`` Fashion-MNIST test images, padded to 32x32, as normalised RGB."""
    with gzip.open(FASHION_MNIST) as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16)[:count * 784]
    images = torch.from_numpy(raw.astype(np.float32) / 255.0).view(count, 1, 28, 28)
    images = F.pad((images - 0.286) / 0.353, (2, 2, 2, 2), value=-0.286 / 0.353)
    return images.expand(-1, 3, -1, -1).contiguous()


@pytest.mark.skipif(not FASHION_MNIST.exists(), reason="Fashion-MNIST is not installed")
@pytest.mark.parametrize("scheme", ["plain", "recu"])
def test_real_data_gives_the_same_predictions(scheme):
    x = fashion_mnist(96)
    torch.manual_seed(3)
    model = bnas.build_model("resnet20_1w1a", binarizer=scheme, num_classes=10)
    check(model, x)
    cell = bnas.build_model(config="bnas-a", layers=5, init_channels=12, binarizer=scheme,
                            num_classes=10)
    check(cell, x)


def test_save_load_round_trip_and_size(tmp_path):
    torch.manual_seed(4)
    model = bnas.build_model(config="bnas-a", layers=5, init_channels=36, binarizer="rbnn")
    x = torch.randn(2, 3, 32, 32)
    packed = check(model, x)
    path = save(packed, tmp_path / "m.bnx")
    loaded = load(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), packed(x))
    assert not any(p.requires_grad for p in loaded.parameters())
    binary = [m for m in loaded.modules() if isinstance(m, PackedConv2d)]
    packed_bytes = sum(m.bits.numel() + 4 * m.alpha.numel() for m in binary)
    float_bytes = sum(4 * c.weight.numel() for c in model.modules() if isinstance(c, BinaryConv2d))
    assert packed_bytes <= float_bytes / 20
    assert path.stat().st_size < sum(v.numel() * v.element_size()
                                     for v in model.state_dict().values()) / 2
    with pytest.raises(BnasError, match="inference-only"):
        loaded.train()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("bnx") / "r.bnx"
    save(pack(bnas.build_model("resnet20_1w1a").eval()), path)
    return path


def _header(path):
    raw = path.read_bytes()
    _, _, length = fileio._PREFIX.unpack_from(raw)
    return raw, fileio._PREFIX.size + length


@pytest.mark.parametrize("damage, message", [
    (lambda raw, end: b"PK\x03\x04" + raw[4:], "not a bnas packed model"),
    (lambda raw, end: raw[:end + 100], "truncated"),
    (lambda raw, end: raw[:20], "truncated"),
    (lambda raw, end: raw[:8] + struct.pack("<I", 99) + raw[12:], "format 99"),
    (lambda raw, end: raw[:fileio._PREFIX.size] + b"[" + raw[fileio._PREFIX.size + 1:],
     "corrupt header"),
    (lambda raw, end: raw[:-10] + bytes(b ^ 0xFF for b in raw[-10:]), "fails its checksum"),
])
def test_bad_files_are_one_clear_error(saved, tmp_path, damage, message):
    raw, end = _header(saved)
    bad = tmp_path / "bad.bnx"
    bad.write_bytes(damage(raw, end))
    with pytest.raises(BnasError, match=message):
        load(bad)


def test_layer_overrides_run_in_float_and_survive_the_file(tmp_path):
    torch.manual_seed(6)
    model = bnas.build_model(config="bnas-a", layers=3, init_channels=8,
                             layer_overrides={"cells.2.preprocess1.conv": "real_weight"})
    packed = check(model, torch.randn(2, 3, 16, 16))
    assert not isinstance(packed.cells[2].preprocess1.conv, PackedConv2d)
    assert isinstance(packed.cells[2].preprocess0.conv, PackedConv2d)
    loaded = load(save(packed, tmp_path / "o.bnx"))
    assert loaded.layer_overrides == {"cells.2.preprocess1.conv": "real_weight"}


def test_tensors_of_another_architecture_are_refused(saved, tmp_path):
    other = pack(bnas.build_model("resnet20_1w1a", binarizer="bop").eval())  # no scales
    other.deploy_identity = load(saved).deploy_identity  # resnet20's header, other tensors
    save(other, tmp_path / "x.bnx")
    with pytest.raises(BnasError, match="another architecture"):
        load(tmp_path / "x.bnx")
    with pytest.raises(BnasError, match="not found"):
        load(tmp_path / "missing.bnx")


def test_operations_the_engine_cannot_run_are_refused():
    model = bnas.build_model("resnet20_1w1a", binarizer="rbnn", a32=True)
    with pytest.raises(BnasError, match="1-bit activations only"):
        pack(model)
    model = bnas.build_model("resnet20_1w1a")
    model.stages[0][0].act1 = nn.GELU()
    with pytest.raises(BnasError, match=r"stages\.0\.0\.act1 \(GELU\)"):
        pack(model)
    with pytest.raises(BnasError, match="only models built by bnas.build_model"):
        pack(nn.Sequential(nn.Linear(2, 2)))
