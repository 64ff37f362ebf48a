"""The networks of the Bop papers as fixed-genotype families: BinaryNet, XNOR-Net and Bi-Real Net.

"Latent Weights Do Not Exist" (Helwegen et al., NeurIPS 2019) and "A Bop and Beyond"
(Suarez-Ramirez et al., CVPR Workshops 2021) train these larq definitions (the authors' code,
``bnn_optimization/models``), families of :data:`bnas.families.FAMILIES`:

* ``binarynet`` (Courbariaux, Hubara et al., 2016) for CIFAR-10: six 3x3 convolutions
  (128-128-M-256-256-M-512-512-M; the first one unpadded, with binary weights and real inputs)
  and three binary dense layers (1024-1024-classes), each followed by a normalisation:
  ``norm: "batch_noscale"`` (``binarynet_batch``: BatchNorm with a shift and no scale, Keras's
  momentum 0.99 and epsilon 1e-3) or ``norm: "layer"`` (``binarynet``, the Bop-and-Beyond
  code's choice: Keras's LayerNormalization over the channels at each position, epsilon 1e-3).
  No other activation: every later layer binarizes its own input. The output is the last
  normalisation's (the softmax is in the loss).
* ``xnornet`` (Rastegari et al., ECCV 2016; the AlexNet form) for ImageNet: real 11x11/4
  convolution, BatchNorm, ReLU, max pool, then binary 5x5, 3x3 x3, 6x6 (valid) and 1x1
  convolutions with BatchNorms (momentum 0.9, the definition's epsilons), ReLU and a real
  bias-free dense classifier (``xnornet_batch``).
* ``birealnet`` (Liu et al., ECCV 2018; larq's Bi-Real Net, ResNet-18 layout) for ImageNet:
  real 7x7/2 stem, BatchNorm, 3x3/2 max pool, 16 blocks of one binary 3x3 convolution and a
  BatchNorm with a shortcut around them (2x2 average pool, real 1x1 convolution and BatchNorm
  where the width doubles), BatchNorm momentum 0.8 and epsilon 1e-3, global pool and a real
  dense classifier (``birealnet_batch``).

Binary layers come from the scheme (``binarizer.conv`` / ``binarizer.linear``), so every scheme
trains them; with Bop the binary weights are Bop's and everything else Adam's.

Documented deviations: Keras's "same" padding of even-sized inputs pads one pixel after (none
before) where a stride-2 window needs it; here the pooling and stride-2 convolutions pad
symmetrically as PyTorch does. BinaryNet's features are average-pooled to the 3x3 a 32x32 input
gives (the identity there) so other input sizes build. The XNOR-Net definition's L2 kernel
regularizer (5e-7 on the first convolution and the classifier) is left to ``--weight-decay``.
The activation's gradient is the scheme's (larq's Bi-Real Net uses ``approx_sign``; Bop's
scheme the clipped straight-through estimator, ``ste_sign``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..binarize.base import Binarizer, BinaryConv2d, downsample_branch
from ..errors import BnasError
from ..registry import Registry

#: Keras's BatchNormalization defaults: moving-average momentum 0.99 (PyTorch's 0.01),
#: epsilon 1e-3.
KERAS_BN_MOMENTUM, KERAS_EPS = 0.01, 1e-3
NORMS: Registry[Callable[[int], nn.Module]] = Registry("normalisation")


class ShiftBatchNorm(nn.BatchNorm1d):
    """BatchNorm with a learned shift and no scale (Keras's ``BatchNormalization(scale=False)``)
    over the channels of ``(N, C)`` or ``(N, C, H, W)`` inputs: ``(x - mean) / sqrt(var + eps) +
    bias``."""

    def __init__(self, channels: int, eps: float = KERAS_EPS,
                 momentum: float = KERAS_BN_MOMENTUM) -> None:
        super().__init__(channels, eps=eps, momentum=momentum, affine=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"expected (N, C) or (N, C, H, W) input, got {x.dim()}-D")
    # forward: BatchNorm's own, whose F.batch_norm call adds ``bias`` when ``weight`` is None


class ChannelLayerNorm(nn.Module):
    """Keras's ``LayerNormalization()`` on channels-last data, for ``(N, C)`` or
    ``(N, C, H, W)`` inputs: each position's ``C`` values are normalised by their own mean and
    (biased) variance, then scaled and shifted per channel."""

    def __init__(self, channels: int, eps: float = KERAS_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, unbiased=False, keepdim=True)
        shape = (1, -1, *([1] * (x.dim() - 2)))
        scaled = (x - mean) / torch.sqrt(var + self.eps) * self.weight.view(shape)
        return scaled + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


NORMS.add("batch_noscale", ShiftBatchNorm)
NORMS.add("layer", ChannelLayerNorm)


class RealInputConv(nn.Module):
    """A scheme's binary convolution applied to real inputs (``self.conv``'s binary weights,
    no input binarization): BinaryNet's first layer."""

    def __init__(self, conv: BinaryConv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv.forward_binary_input(x)


class Sequential1w1a(nn.Module):
    """``features`` -> ``pool`` -> flatten -> ``classifier`` (BinaryNet, XNOR-Net)."""

    def __init__(self, features: nn.Sequential, pool: nn.Module, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.pool = pool
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def binarynet(*, num_classes: int, binarizer: Binarizer, norm: str, filters: int = 128,
              dense_units: int = 1024) -> nn.Module:
    """BinaryNet for 32x32 inputs (module docstring); ``norm`` is ``NORMS[norm]``."""
    make_norm = NORMS.get(norm)
    widths = (filters, filters, 2 * filters, 2 * filters, 4 * filters, 4 * filters)
    layers: list[nn.Module] = [RealInputConv(binarizer.conv(3, filters, 3)), make_norm(filters)]
    for i in range(1, len(widths)):
        layers.append(binarizer.conv(widths[i - 1], widths[i], 3, padding=1))
        if i % 2:
            layers.append(nn.MaxPool2d(2, stride=2))
        layers.append(make_norm(widths[i]))
    dense = [widths[-1] * 9, dense_units, dense_units, num_classes]
    head: list[nn.Module] = []
    for c_in, c_out in zip(dense, dense[1:]):
        head += [binarizer.linear(c_in, c_out), make_norm(c_out)]
    return Sequential1w1a(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(3), nn.Sequential(*head))


def xnornet(*, num_classes: int, binarizer: Binarizer) -> nn.Module:
    """XNOR-Net (AlexNet form) for 224x224 inputs (module docstring)."""

    def bn(c: int, eps: float) -> nn.Module:
        return nn.BatchNorm2d(c, eps=eps, momentum=0.1)  # Keras momentum 0.9

    features = nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4, padding=5, bias=False), bn(96, 1e-5), nn.ReLU(),
        nn.MaxPool2d(3, stride=2), bn(96, 1e-4),
        binarizer.conv(96, 256, 5, padding=2), nn.MaxPool2d(3, stride=2), bn(256, 1e-4),
        binarizer.conv(256, 384, 3, padding=1), bn(384, 1e-4),
        binarizer.conv(384, 384, 3, padding=1), bn(384, 1e-4),
        binarizer.conv(384, 256, 3, padding=1), nn.MaxPool2d(3, stride=2), bn(256, 1e-4),
        binarizer.conv(256, 4096, 6), bn(4096, 1e-4),
        binarizer.conv(4096, 4096, 1), bn(4096, 1e-3), nn.ReLU())
    classifier = nn.Sequential(nn.Linear(4096, num_classes, bias=False))
    return Sequential1w1a(features, nn.Identity(), classifier)


class BiRealUnit(nn.Module):
    """One binary 3x3 convolution and its BatchNorm with a shortcut around them: the shortcut
    is the identity, or 2x2 average pool -> real 1x1 conv -> BatchNorm where the width doubles."""

    def __init__(self, c_in: int, c_out: int, binarizer: Binarizer) -> None:
        super().__init__()
        stride = 1 if c_in == c_out else 2
        self.conv = binarizer.conv(c_in, c_out, 3, stride=stride, padding=1)
        self.bn = _birealnet_bn(c_out)
        self.shortcut = downsample_branch(nn.Identity() if c_in == c_out else nn.Sequential(
            nn.AvgPool2d(2, stride=2), nn.Conv2d(c_in, c_out, 1, bias=False),
            _birealnet_bn(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.shortcut(x)


def _birealnet_bn(c: int) -> nn.Module:
    return nn.BatchNorm2d(c, eps=KERAS_EPS, momentum=0.2)  # Keras momentum 0.8


class BiRealNet(nn.Module):
    """Stem -> Bi-Real units -> global average pool -> Linear."""

    def __init__(self, stem: nn.Sequential, units: nn.Sequential, c_last: int,
                 num_classes: int) -> None:
        super().__init__()
        self.stem = stem
        self.units = units
        self.classifier = nn.Linear(c_last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.units(self.stem(x)), 1).flatten(1))


def birealnet(*, num_classes: int, binarizer: Binarizer,
              widths: Sequence[int] = (64, 128, 256, 512), units_per_stage: int = 4) -> nn.Module:
    """larq's Bi-Real Net (module docstring), glorot-normal convolutions (Keras's initialiser
    there)."""
    if units_per_stage < 1 or not widths:
        raise BnasError("birealnet needs at least one stage of at least one unit")
    stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False),
                         _birealnet_bn(widths[0]), nn.MaxPool2d(3, stride=2, padding=1))
    units, c_in = [], widths[0]
    for width in widths:
        for _ in range(units_per_stage):
            units.append(BiRealUnit(c_in, width, binarizer))
            c_in = width
    model = BiRealNet(stem, nn.Sequential(*units), c_in, num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
    return model
