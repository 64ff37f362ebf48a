"""Hand-designed 1w1a networks (the ResNet and VGG-small model zoo) as fixed-genotype families.

A fixed genotype names a *network family* and its structural keywords (declared in
:mod:`bnas.families`), e.g. ``{"family": "resnet", "stem": "conv3x3_act", "block": "basic",
"depths": [3, 3, 3], ...}``. Each family is a function here called as ``family(num_classes=,
binarizer=, **keywords)``. Every binary convolution comes from ``binarizer.conv(...)`` (which
binarizes its own input activation); the stem convolution and the classifier stay real-valued.

The definitions follow Rotated Binary Neural Network (Lin et al., NeurIPS 2020), whose
networks ReCU (Xu et al., ICCV 2021) and SiMaN (Lin et al., TPAMI 2022) reuse:

* ResNet (He et al., CVPR 2016) with Hardtanh activations and a BatchNorm1d before the
  classifier; blocks are the standard basic block or the Bi-Real block (Liu et al., ECCV 2018),
  which puts a shortcut around each binary convolution.
* VGG-small (Zhang et al., LQ-Nets, ECCV 2018): six 3x3 convolutions with max pooling before
  BatchNorm.

Documented deviation: the ResNets pool globally (the references pool with a fixed 4x4 / 7x7
window, which is the same thing at 32x32 / 224x224 inputs), and VGG-small average-pools its
features to the size a 32x32 input gives (the identity at 32x32), so other input sizes build.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..binarize.base import Binarizer, downsample_branch
from ..errors import BnasError
from ..families import validate_network
from ..registry import Registry

STEMS: Registry[Callable[[int], nn.Module]] = Registry("stem")
SHORTCUTS: Registry[Callable[[int, int, int, Binarizer], nn.Module]] = Registry("shortcut")
BLOCKS: Registry[type[nn.Module]] = Registry("residual block")
INITS: Registry[Callable[[nn.Module], None]] = Registry("initialisation")
ACTIVATIONS: Registry[Callable[[int], nn.Module]] = Registry("activation")

_CIFAR_INPUT = 32


def build_fixed(spec: dict[str, Any], num_classes: int, binarizer: Binarizer) -> nn.Module:
    """Instantiate a fixed network description (:mod:`bnas.families`)."""
    family = validate_network(spec, "fixed network")
    kwargs = {k: v for k, v in spec.items() if k != "family"}
    return family.builder(num_classes=num_classes, binarizer=binarizer, **kwargs)


def _positive_ints(name: str, values: Any) -> list[int]:
    if (not isinstance(values, (list, tuple)) or not values
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)):
        raise BnasError(f"'{name}' must be a non-empty list of positive integers, got {values!r}")
    return list(values)


# -- activations ------------------------------------------------------------------------------
@ACTIVATIONS.register("hardtanh")
def hardtanh(channels: int) -> nn.Module:
    """``clamp(x, -1, 1)`` (RBNN's and ReCU's networks)."""
    return nn.Hardtanh()


@ACTIVATIONS.register("prelu")
def prelu(channels: int) -> nn.Module:
    """``max(x, 0) + a_c * min(x, 0)`` with a learnable slope per channel initialised to 0.25
    (He et al., ICCV 2015; SiMaN's networks)."""
    return nn.PReLU(channels)


@ACTIVATIONS.register("relu")
def relu(channels: int) -> nn.Module:
    """``max(x, 0)`` (SiMaN's stems)."""
    return nn.ReLU()


# -- stems (real-valued) ----------------------------------------------------------------------
@STEMS.register("conv3x3")
def conv3x3_stem(c_out: int) -> nn.Module:
    """CIFAR stem without activation: real 3x3 conv -> BN (RBNN's CIFAR ResNet-18)."""
    return nn.Sequential(nn.Conv2d(3, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))


@STEMS.register("conv3x3_act")
def conv3x3_act_stem(c_out: int) -> nn.Module:
    """CIFAR stem: real 3x3 conv -> BN -> Hardtanh (RBNN's ResNet-20)."""
    return nn.Sequential(*conv3x3_stem(c_out), nn.Hardtanh())


@STEMS.register("conv3x3_relu")
def conv3x3_relu_stem(c_out: int) -> nn.Module:
    """CIFAR stem: real 3x3 conv -> BN -> ReLU (SiMaN's ResNet-20)."""
    return nn.Sequential(*conv3x3_stem(c_out), nn.ReLU())


def _conv7x7_pool(c_out: int, act: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, c_out, 7, stride=2, padding=3, bias=False),
                         nn.BatchNorm2d(c_out), act, nn.MaxPool2d(3, stride=2, padding=1))


@STEMS.register("conv7x7_pool")
def conv7x7_pool_stem(c_out: int) -> nn.Module:
    """ImageNet stem: real 7x7/2 conv -> BN -> Hardtanh -> 3x3/2 max pool (224 -> 56)."""
    return _conv7x7_pool(c_out, nn.Hardtanh())


@STEMS.register("conv7x7_relu_pool")
def conv7x7_relu_pool_stem(c_out: int) -> nn.Module:
    """ImageNet stem: real 7x7/2 conv -> BN -> ReLU -> 3x3/2 max pool (SiMaN's ResNets)."""
    return _conv7x7_pool(c_out, nn.ReLU())


# -- shortcuts of blocks that change shape ----------------------------------------------------
class ZeroPadShortcut(nn.Module):
    """He et al.'s option A: subsample spatially by ``stride`` and zero-pad the channels
    (half the extra channels before, half after; ``planes // 4`` each side when the width
    doubles). No parameters."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        if c_out < c_in:
            raise BnasError(f"the zero_pad shortcut cannot shrink channels ({c_in} -> {c_out})")
        self.stride = stride
        self.pad_front = (c_out - c_in) // 2
        self.pad_back = c_out - c_in - self.pad_front

    def subsample(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial reduction: every ``stride``-th pixel."""
        s = self.stride
        return x[:, :, ::s, ::s]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(self.subsample(x), (0, 0, 0, 0, self.pad_front, self.pad_back))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_front}, {self.pad_back})"


class AvgPoolZeroPadShortcut(ZeroPadShortcut):
    """As :class:`ZeroPadShortcut`, but the spatial reduction averages each ``stride x stride``
    window (``AvgPool2d(stride)``) instead of keeping its top-left pixel (ReCU's CIFAR ResNets).
    No parameters."""

    def subsample(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        return F.avg_pool2d(x, s) if s > 1 else x


@SHORTCUTS.register("zero_pad")
def zero_pad_shortcut(c_in: int, c_out: int, stride: int, binarizer: Binarizer) -> nn.Module:
    return ZeroPadShortcut(c_in, c_out, stride)


@SHORTCUTS.register("avgpool_zero_pad")
def avgpool_zero_pad_shortcut(c_in: int, c_out: int, stride: int,
                              binarizer: Binarizer) -> nn.Module:
    return AvgPoolZeroPadShortcut(c_in, c_out, stride)


@SHORTCUTS.register("binary_conv")
def binary_conv_shortcut(c_in: int, c_out: int, stride: int, binarizer: Binarizer) -> nn.Module:
    """Binary 1x1 conv (stride) -> BN (RBNN's CIFAR ResNet-18/34)."""
    return nn.Sequential(binarizer.conv(c_in, c_out, 1, stride=stride), nn.BatchNorm2d(c_out))


@SHORTCUTS.register("real_conv")
def real_conv_shortcut(c_in: int, c_out: int, stride: int, binarizer: Binarizer) -> nn.Module:
    """Real 1x1 conv (stride) -> BN (the ImageNet ResNets' downsample)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(c_out))


# -- residual blocks --------------------------------------------------------------------------
class _TwoConvBlock(nn.Module):
    """Two binary 3x3 convolutions, each followed by BN, with ``ACTIVATIONS[act]`` activations
    (Hardtanh by default).

    The shortcut is the identity unless the block changes stride or width, in which case it is
    ``SHORTCUTS[shortcut]``. Subclasses say where the shortcuts join.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, binarizer: Binarizer,
                 shortcut: str, act: str = "hardtanh") -> None:
        super().__init__()
        self.conv1 = binarizer.conv(c_in, c_out, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.act1 = ACTIVATIONS.get(act)(c_out)
        self.conv2 = binarizer.conv(c_out, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act2 = ACTIVATIONS.get(act)(c_out)
        self.shortcut = downsample_branch(
            nn.Identity() if stride == 1 and c_in == c_out
            else SHORTCUTS.get(shortcut)(c_in, c_out, stride, binarizer))


@BLOCKS.register("basic")
class BasicBlock(_TwoConvBlock):
    """``act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x))`` (He et al., 2016)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + self.shortcut(x))


@BLOCKS.register("bireal")
class BiRealBlock(_TwoConvBlock):
    """A shortcut around each binary conv (Bi-Real Net, Liu et al., ECCV 2018):
    ``h = act(bn1(conv1(x)) + shortcut(x))``, ``out = act(bn2(conv2(h)) + h)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)) + self.shortcut(x))
        return self.act2(self.bn2(self.conv2(out)) + out)


# -- initialisations --------------------------------------------------------------------------
def _kaiming_normal(model: nn.Module, types: tuple[type[nn.Module], ...]) -> None:
    for m in model.modules():
        if isinstance(m, types):
            nn.init.kaiming_normal_(m.weight)


def _bn2d_gamma(model: nn.Module, gamma: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, gamma)
            nn.init.zeros_(m.bias)


@INITS.register("default")
def default_init(model: nn.Module) -> None:
    """PyTorch's own layer initialisation (RBNN's CIFAR ResNet-18 sets nothing)."""


@INITS.register("kaiming")
@torch.no_grad()
def kaiming_init(model: nn.Module) -> None:
    """Kaiming-normal convolutions; everything else keeps PyTorch's initialisation (ReCU's
    CIFAR ResNets)."""
    _kaiming_normal(model, (nn.Conv2d,))


@INITS.register("kaiming_fc")
@torch.no_grad()
def kaiming_fc_init(model: nn.Module) -> None:
    """Kaiming-normal convolutions and linear weights; everything else keeps PyTorch's
    initialisation (SiMaN's ResNet-20)."""
    _kaiming_normal(model, (nn.Conv2d, nn.Linear))


@INITS.register("kaiming_bn1e-8")
@torch.no_grad()
def kaiming_tiny_bn_init(model: nn.Module) -> None:
    """Kaiming-normal convolutions (He et al., ICCV 2015: std sqrt(2 / fan_in)); every
    BatchNorm2d gamma 1e-8, beta 0 (RBNN's ImageNet ResNets). BatchNorm1d keeps gamma 1."""
    _kaiming_normal(model, (nn.Conv2d,))
    _bn2d_gamma(model, 1e-8)


@INITS.register("kaiming_bn1e-8_fc")
@torch.no_grad()
def kaiming_tiny_bn_fc_init(model: nn.Module) -> None:
    """As ``kaiming_bn1e-8``, and the classifier weight Kaiming-normal too (its bias keeps
    PyTorch's default) (RBNN's ResNet-20 and Bi-Real ResNet-20)."""
    kaiming_tiny_bn_init(model)
    _kaiming_normal(model, (nn.Linear,))


@INITS.register("vgg")
@torch.no_grad()
def vgg_init(model: nn.Module) -> None:
    """Convolutions normal(0, sqrt(2 / (k*k*out))) (bias 0), BatchNorm2d gamma 1 and beta 0,
    linear layers normal(0, 0.01) with bias 0 (RBNN's VGG-small)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            nn.init.zeros_(m.bias)
    _bn2d_gamma(model, 1.0)


# -- networks ---------------------------------------------------------------------------------
class ResNet1w1a(nn.Module):
    """Stem -> stages of residual blocks -> global average pool -> BatchNorm1d -> Linear."""

    def __init__(self, stem: nn.Module, stages: nn.Sequential, c_last: int,
                 num_classes: int) -> None:
        super().__init__()
        self.stem = stem
        self.stages = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bn = nn.BatchNorm1d(c_last)
        self.classifier = nn.Linear(c_last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.classifier(self.bn(out))


def resnet(*, num_classes: int, binarizer: Binarizer, stem: str, block: str,
           depths: Sequence[int], widths: Sequence[int], shortcut: str,
           init: str, act: str = "hardtanh") -> nn.Module:
    """A 1w1a ResNet: ``STEMS[stem](widths[0])``, then ``len(depths)`` stages of
    ``depths[i]`` blocks of width ``widths[i]`` (``BLOCKS[block]``); the first block of every
    stage but the first has stride 2, and blocks that change shape use ``SHORTCUTS[shortcut]``.
    ``INITS[init]`` initialises the weights; ``ACTIVATIONS[act]`` are the blocks' activations.

    RBNN's networks: ResNet-20 is ``conv3x3_act``/``basic``/[3, 3, 3]/[16, 32, 64]/``zero_pad``,
    its Bi-Real form the same with ``bireal``; CIFAR ResNet-18 is
    ``conv3x3``/``basic``/[2, 2, 2, 2]/[64, 128, 256, 512]/``binary_conv``; ImageNet
    ResNet-18/34 are ``conv7x7_pool``/``bireal``/``real_conv``. ReCU's CIFAR ResNets use the
    ``avgpool_zero_pad`` shortcut (ResNet-20 with ``bireal`` blocks); SiMaN's ResNet-20 and
    ImageNet ResNets ``act: "prelu"`` with ReLU stems (``conv3x3_relu``, ``conv7x7_relu_pool``).
    """
    depths = _positive_ints("depths", depths)
    widths = _positive_ints("widths", widths)
    if len(depths) != len(widths):
        raise BnasError(f"'depths' and 'widths' need one entry per stage, got {len(depths)} "
                        f"and {len(widths)}")
    block_cls = BLOCKS.get(block)
    SHORTCUTS.get(shortcut)  # an unknown name fails here even when no block needs it
    ACTIVATIONS.get(act)
    init_fn = INITS.get(init)
    stages = []
    c_in = widths[0]
    for i, (depth, width) in enumerate(zip(depths, widths)):
        blocks = []
        for j in range(depth):
            stride = 2 if i > 0 and j == 0 else 1
            blocks.append(block_cls(c_in, width, stride, binarizer, shortcut, act))
            c_in = width
        stages.append(nn.Sequential(*blocks))
    model = ResNet1w1a(STEMS.get(stem)(widths[0]), nn.Sequential(*stages), c_in, num_classes)
    init_fn(model)
    return model


class VGGSmall1w1a(nn.Module):
    """Real conv -> BN -> activation, then binary convs each followed by [2x2 max pool] -> BN ->
    activation; the flattened features feed a real Linear classifier."""

    def __init__(self, features: nn.Sequential, pooled: int, c_last: int,
                 num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(pooled)  # the identity at 32x32 inputs
        self.classifier = nn.Linear(c_last * pooled * pooled, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def _vgg_layers(cfg: Sequence[Any]) -> list[tuple[int, bool]]:
    """``[128, 128, "M", ...]`` -> ``[(128, False), (128, True), ...]``: each conv's width
    and whether a max pool follows it."""
    layers: list[tuple[int, bool]] = []
    for item in cfg:
        if item == "M" and layers and not layers[-1][1]:
            layers[-1] = (layers[-1][0], True)
        elif isinstance(item, int) and not isinstance(item, bool) and item > 0:
            layers.append((item, False))
        else:
            raise BnasError(f"'cfg' holds positive widths, each optionally followed by one "
                            f"\"M\" (max pool); got {list(cfg)!r}")
    if not layers:
        raise BnasError("'cfg' needs at least one convolution")
    return layers


def vgg_small(*, num_classes: int, binarizer: Binarizer, cfg: Sequence[Any],
              init: str, act: str = "hardtanh") -> nn.Module:
    """VGG-small: ``cfg`` lists conv widths, ``"M"`` after a width adds a 2x2 max pool between
    that conv and its BatchNorm; every BatchNorm is followed by ``ACTIVATIONS[act]``. The first
    conv is real, the others come from the binarizer. RBNN's network is
    ``[128, 128, "M", 256, 256, "M", 512, 512, "M"]`` with ``init: "vgg"`` (classifier
    ``Linear(512*4*4, classes)``); SiMaN's the same with ``act: "prelu"``."""
    layers = _vgg_layers(cfg)
    init_fn = INITS.get(init)
    make_act = ACTIVATIONS.get(act)
    modules: list[nn.Module] = []
    c_in = 3
    for i, (width, pool) in enumerate(layers):
        if i == 0:
            modules.append(nn.Conv2d(c_in, width, 3, padding=1, bias=False))
        else:
            modules.append(binarizer.conv(c_in, width, 3, padding=1))
        if pool:
            modules.append(nn.MaxPool2d(2, stride=2))
        modules += [nn.BatchNorm2d(width), make_act(width)]
        c_in = width
    pooled = max(1, _CIFAR_INPUT >> sum(pool for _, pool in layers))
    model = VGGSmall1w1a(nn.Sequential(*modules), pooled, c_in, num_classes)
    init_fn(model)
    return model
