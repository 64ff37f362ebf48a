"""The seeds' own network variants (ReCU's and SiMaN's zoos): sizes, structure, wiring, and a
training step under every binarization scheme."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnas import binarize
from bnas.binarize.base import BinaryConv2d
from bnas.model import build_model
from bnas.model.fixed import AvgPoolZeroPadShortcut, BasicBlock, BiRealBlock, ZeroPadShortcut

# Parameter counts with the "plain" binarizer, from the layer shapes of the reference
# definitions: PReLU adds one slope per channel of every block activation (two per block) or
# VGG activation; ReCU's CIFAR ResNet-18 has no 1x1 downsample convolutions (RBNN's has three,
# 64*128 + 128*256 + 256*512 weights and 2*(128 + 256 + 512) BatchNorm parameters).
RBNN_R20, RBNN_R18, RBNN_VGG = 269_850, 11_174_986, 4_660_106
IMNET_R18, IMNET_R34 = 11_690_536, 21_798_696
PARAMS = {
    ("recu_resnet20_1w1a", "cifar10"): RBNN_R20,
    ("recu_resnet18_1w1a", "cifar10"): RBNN_R18 - (8192 + 32768 + 131072) - 2 * (128 + 256 + 512),
    ("recu_resnet18_1w1a", "imagenet"): IMNET_R18,
    ("siman_resnet20_1w1a", "cifar10"): RBNN_R20 + 2 * 3 * (16 + 32 + 64),
    ("siman_vgg_small_1w1a", "cifar10"): RBNN_VGG + 2 * (128 + 256 + 512),
    ("siman_resnet18_1w1a", "cifar10"): RBNN_R18,
    ("siman_resnet18_1w1a", "imagenet"): IMNET_R18 + 2 * 2 * (64 + 128 + 256 + 512),
    ("siman_resnet34_1w1a", "imagenet"): IMNET_R34 + 2 * (3 * 64 + 4 * 128 + 6 * 256 + 3 * 512),
}


@pytest.mark.parametrize("name,dataset", list(PARAMS))
def test_parameter_counts(name, dataset):
    model = build_model(name, dataset=dataset, binarizer="plain")
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name, dataset]


def test_recu_resnet18_matches_its_published_size():
    assert PARAMS["recu_resnet18_1w1a", "cifar10"] == 11_001_162


SMALL = ["recu_resnet20_1w1a", "siman_resnet20_1w1a", "siman_vgg_small_1w1a"]


@pytest.mark.parametrize("scheme", binarize.names())
@pytest.mark.parametrize("name", SMALL)
def test_training_step_under_every_scheme(name, scheme):
    torch.manual_seed(0)
    model = build_model(name, dataset="cifar10", binarizer=scheme).train()
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    F.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
    learned = [n for n, p in model.named_parameters() if p.grad is not None]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    prelus = [n for n, m in model.named_modules() if isinstance(m, nn.PReLU)]
    assert all(f"{n}.weight" in learned for n in prelus)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()


@pytest.mark.parametrize("scheme", binarize.names())
def test_imagenet_prelu_resnet_under_every_scheme(scheme):
    torch.manual_seed(0)
    model = build_model("siman_resnet18_1w1a", dataset="imagenet", binarizer=scheme,
                        num_classes=5).train()
    out = model(torch.randn(2, 3, 64, 64))
    F.cross_entropy(out, torch.tensor([0, 1])).backward()
    assert model.stem[0].weight.grad is not None
    assert model.stages[3][1].act2.weight.grad is not None


def test_structure():
    r20 = build_model("recu_resnet20_1w1a", dataset="cifar10")
    assert len([m for m in r20.modules() if isinstance(m, BiRealBlock)]) == 9
    shortcuts = [m for m in r20.modules() if isinstance(m, ZeroPadShortcut)]
    assert len(shortcuts) == 2 and all(type(m) is AvgPoolZeroPadShortcut for m in shortcuts)
    assert [type(m) for m in r20.stem] == [nn.Conv2d, nn.BatchNorm2d, nn.Hardtanh]
    assert isinstance(r20.stages[0][0].act1, nn.Hardtanh)

    r18 = build_model("recu_resnet18_1w1a", dataset="cifar10")
    assert len([m for m in r18.modules() if isinstance(m, BasicBlock)]) == 8
    assert len([m for m in r18.modules() if isinstance(m, AvgPoolZeroPadShortcut)]) == 3
    assert sum(isinstance(m, BinaryConv2d) for m in r18.modules()) == 16

    s20 = build_model("siman_resnet20_1w1a", dataset="cifar10")
    assert [type(m) for m in s20.stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    block = s20.stages[1][0]
    assert isinstance(block, BiRealBlock) and type(block.shortcut) is ZeroPadShortcut
    assert block.act1.weight.shape == (32,) and torch.all(block.act1.weight == 0.25)

    vgg = build_model("siman_vgg_small_1w1a", dataset="cifar10")
    assert [m.weight.numel() for m in vgg.features if isinstance(m, nn.PReLU)] == \
        [128, 128, 256, 256, 512, 512]

    s18 = build_model("siman_resnet18_1w1a", dataset="imagenet")
    assert [type(m) for m in s18.stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert isinstance(s18.stages[2][0].act2, nn.PReLU)


def test_avgpool_zero_pad_shortcut_values():
    shortcut = AvgPoolZeroPadShortcut(16, 32, stride=2)
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    expected = torch.zeros(2, 32, 4, 4, dtype=torch.float64)
    for i in range(4):
        for j in range(4):
            window = x[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
            expected[:, 8:24, i, j] = window.sum(dim=(2, 3)) / 4
    torch.testing.assert_close(shortcut(x), expected, rtol=0, atol=1e-15)
    assert not list(shortcut.parameters())


def test_init():
    s20 = build_model("siman_resnet20_1w1a", dataset="cifar10")
    assert torch.all(s20.stages[0][0].bn1.weight == 1.0)  # BatchNorm keeps PyTorch's init
    w = s20.classifier.weight  # Kaiming normal: std sqrt(2 / 64); PyTorch's default is smaller
    assert w.abs().max() > 1.0 / 8.0
    r20 = build_model("recu_resnet20_1w1a", dataset="cifar10")
    assert torch.all(r20.stages[0][0].bn1.weight == 1.0)
    assert r20.classifier.weight.abs().max() <= 1.0 / 8.0  # PyTorch's uniform(+-1/sqrt(64))


def test_training_says_which_network_the_paper_used(tmp_path):
    from bnas.run.context import Context
    from bnas.train import Trainer, resolve_config

    cfg = resolve_config(None, {"arch": "resnet20_1w1a", "binarizer": "siman", "dataset": "digits",
                                "epochs": 1, "train_subset": 32, "val_subset": 32, "workers": 0,
                                "progress": False, "device": "cpu", "out": str(tmp_path)})
    Trainer(cfg, Context()).close()
    assert ("siman's published figures for resnet20_1w1a used its own network, --arch "
            "siman_resnet20_1w1a") in (tmp_path / "log").read_text()
