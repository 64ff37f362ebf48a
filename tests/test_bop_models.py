"""The Bop papers' networks (BinaryNet, XNOR-Net, Bi-Real Net) and the binary dense layer."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bnas import binarize
from bnas.binarize.base import BinaryLinear
from bnas.binarize.optim import is_binary_weight
from bnas.model import build_model
from bnas.model.bopnets import ChannelLayerNorm, RealInputConv, ShiftBatchNorm

# Trainable parameters from the definitions' layer shapes (bias-free binary layers).
BINARYNET_CONVS = 3 * 128 * 9 + 128 * 128 * 9 + 128 * 256 * 9 + 256 * 256 * 9 + 256 * 512 * 9 \
    + 512 * 512 * 9
BINARYNET_DENSE = 4608 * 1024 + 1024 * 1024 + 1024 * 10
BINARYNET_NORMED = 128 + 128 + 256 + 256 + 512 + 512 + 1024 + 1024 + 10


def _birealnet() -> int:
    convs = 7 * 7 * 3 * 64 + 2 * 64  # stem and its BatchNorm
    c_in = 64
    for width in (64, 128, 256, 512):
        for _ in range(4):
            convs += c_in * width * 9 + 2 * width
            if c_in != width:
                convs += c_in * width + 2 * width  # 1x1 shortcut and BatchNorm
            c_in = width
    return convs + 512 * 1000 + 1000


XNORNET = (3 * 96 * 121 + 96 * 256 * 25 + 256 * 384 * 9 + 384 * 384 * 9 + 384 * 256 * 9
           + 256 * 4096 * 36 + 4096 * 4096 + 4096 * 1000
           + 2 * (96 + 96 + 256 + 384 + 384 + 256 + 4096 + 4096))
PARAMS = {
    ("binarynet_batch", "cifar10"): BINARYNET_CONVS + BINARYNET_DENSE + BINARYNET_NORMED,
    ("binarynet", "cifar10"): BINARYNET_CONVS + BINARYNET_DENSE + 2 * BINARYNET_NORMED,
    ("birealnet_batch", "imagenet"): _birealnet(),
    ("xnornet_batch", "imagenet"): XNORNET,
}


@pytest.mark.parametrize("name,dataset", list(PARAMS))
def test_parameter_counts(name, dataset):
    model = build_model(name, dataset=dataset, binarizer="bop")
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name, dataset]


def test_published_sizes():
    assert PARAMS["binarynet_batch", "cifar10"] == 10_355_850
    assert PARAMS["birealnet_batch", "imagenet"] == 11_689_512


@pytest.mark.parametrize("scheme", binarize.names())
@pytest.mark.parametrize("name", ["binarynet", "binarynet_batch"])
def test_binarynet_trains_under_every_scheme(name, scheme):
    torch.manual_seed(0)
    model = build_model(name, dataset="cifar10", binarizer=scheme).train()
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    F.cross_entropy(out, torch.arange(4)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    dense = [m for m in model.modules() if isinstance(m, BinaryLinear)]
    assert [(m.in_features, m.out_features) for m in dense] == [(4608, 1024), (1024, 1024),
                                                               (1024, 10)]


@pytest.mark.parametrize("scheme", binarize.names())
def test_birealnet_trains_under_every_scheme(scheme):
    torch.manual_seed(0)
    model = build_model("birealnet_batch", dataset="imagenet", binarizer=scheme,
                        num_classes=5).train()
    F.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 1])).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["bop", "bop2", "plain"])
def test_xnornet_trains(scheme):
    model = build_model("xnornet_batch", dataset="imagenet", binarizer=scheme).train()
    F.cross_entropy(model(torch.randn(2, 3, 224, 224)), torch.tensor([0, 1])).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_xnornet_forward():
    model = build_model("xnornet_batch", dataset="imagenet", binarizer="bop").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_bop_owns_every_binary_weight_of_binarynet():
    model = build_model("binarynet_batch", dataset="cifar10", binarizer="bop")
    binary = [f"{m}.{n}" for m, mod in model.named_modules()
              for n, p in mod.named_parameters(recurse=False) if is_binary_weight(mod, n, p)]
    assert len(binary) == 6 + 3  # every convolution (the first too) and every dense layer
    assert isinstance(model.features[0], RealInputConv)
    assert "features.0.conv.weight" in binary and "classifier.4.conv.weight" in binary


def test_binary_dense_layer_values():
    layer = binarize.get("plain").linear(6, 3).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    w = layer.conv.weight.detach().view(3, 6)
    w = (w - w.mean(dim=1, keepdim=True)).clamp(-1, 1)  # BNAS's projection (I = 6)
    expected = torch.sign(x) @ (torch.sign(w) * w.abs().mean(dim=1, keepdim=True)).t()
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


def test_real_input_first_layer():
    conv = binarize.get("bop").conv(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)
    expected = F.conv2d(x, torch.where(conv.weight >= 0, 1.0, -1.0))
    torch.testing.assert_close(RealInputConv(conv)(x), expected)


def test_normalisations():
    x = torch.randn(8, 5, 3, 3, dtype=torch.float64)
    bn = ShiftBatchNorm(5).double().train()
    bn.bias.data = torch.arange(5.0, dtype=torch.float64)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-3) + bn.bias.view(1, 5, 1, 1)
    torch.testing.assert_close(bn(x), expected)
    assert bn.momentum == 0.01 and bn.weight is None
    y = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(bn.eval()(y), (y - bn.running_mean) / torch.sqrt(
        bn.running_var + 1e-3) + bn.bias)

    ln = ChannelLayerNorm(5).double()
    ln.weight.data = torch.linspace(0.5, 1.5, 5, dtype=torch.float64)
    expected = torch.empty_like(x)
    for i in range(3):
        for j in range(3):
            v = x[:, :, i, j]
            expected[:, :, i, j] = (v - v.mean(1, keepdim=True)) / torch.sqrt(
                v.var(1, unbiased=False, keepdim=True) + 1e-3) * ln.weight
    torch.testing.assert_close(ln(x), expected)


# -- the Bop-and-Beyond hyper-parameter sets ----------------------------------------------------
def test_presets_are_the_authors_sets():
    from bnas.train import resolve_config

    cifar = resolve_config("bop2ndOrder_CIFAR", {})
    assert (cifar.arch, cifar.binarizer, cifar.epochs, cifar.batch_size, cifar.lr) == \
        ("binarynet", "bop2", 500, 50, 0.01)
    assert cifar.binarizer_hparams["sigma"] == {"schedule": "linear", "start": 1e-7, "end": 1e-2}
    assert resolve_config("bop2ndOrder_unbiased_CIFAR", {}).binarizer_hparams["bias_correction"]
    imagenet = resolve_config("bop2ndOrder_ImageNet", {})
    assert (imagenet.arch, imagenet.epochs, imagenet.batch_size) == ("birealnet_batch", 150, 1024)
    assert imagenet.binarizer_hparams["threshold"] == {"schedule": "linear", "start": 1e-8,
                                                        "end": 1e-5}
    decay = resolve_config("bop2ndOrder_testExp", {})
    assert decay.epochs == 350 and decay.schedule_args == {"milestones": [100, 200, 300],
                                                           "factor": 0.1}
    for key, start in (("threshold", 1e-6), ("gamma", 1e-7), ("sigma", 1e-3)):
        assert decay.binarizer_hparams[key] == {"schedule": "step", "start": start,
                                                "factor": 0.1, "every": 100}
    assert resolve_config("bop2ndOrder_unbiased_testExp", {}).binarizer_hparams["bias_correction"]
    assert resolve_config("bop_testExp", {}).binarizer == "bop"


def test_a_preset_trains_binarynet(tmp_path):
    from bnas.train import resolve_config, train
    from bnas.train import checkpoint

    cfg = resolve_config("bop_testExp", {"dataset": "digits", "epochs": 1, "train_subset": 50,
                                         "val_subset": 25, "workers": 0, "progress": False,
                                         "device": "cpu", "out": str(tmp_path)})
    result = train(cfg)
    assert result["epochs"] == 1
    saved = checkpoint.load(tmp_path / "best.pt")
    assert saved["identity"]["arch"] == "binarynet_batch" and saved["identity"]["num_classes"] == 10
    weights = [v for k, v in saved["model"].items() if k.endswith("conv.weight")]
    assert weights and all(set(w.unique().tolist()) <= {-1.0, 1.0} for w in weights)  # Bop's
