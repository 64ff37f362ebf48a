"""The layers that search-space operations are made of.

A binary operation is BNAS's template (Kim et al., ECCV 2020, Sec. 3.1): BatchNorm ->
binary activation -> binary-weight convolution -> ReLU. The binarizer supplies the
convolution, which binarizes its own input, so no real value slips between the sign and the
convolution. With its ``lean`` attribute set (evaluated cells set it, see
:func:`bnas.ops.lean.set_lean`) it trains through :mod:`bnas.ops.lean`: same maths, less memory.
"""
from __future__ import annotations

import torch
from torch import nn

from ..binarize.base import Binarizer
from .lean import binary_conv_relu, lean_capable


class BinConvOp(nn.Sequential):
    """BatchNorm(C_in) -> binary conv (sign input, binary weights) -> ReLU.

    ``forward(x, factor)`` also multiplies by a per-sample drop-path factor when one is given.
    """

    lean = False

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int,
                 binarizer: Binarizer, dilation: int = 1, affine: bool = True) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in, affine=affine)
        self.conv = binarizer.conv(c_in, c_out, kernel_size, stride=stride, padding=padding,
                                   dilation=dilation)
        self.relu = nn.ReLU(inplace=False)
        self._lean_capable: bool | None = None

    def forward(self, x: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        if self.training and self.lean and not torch.is_autocast_enabled(x.device.type):
            if self._lean_capable is None:
                self._lean_capable = lean_capable(self.bn, self.conv)
            if self._lean_capable:
                return binary_conv_relu(self.bn, self.conv, x, factor)
        y = super().forward(x)
        return y if factor is None else y * factor


class RealConvOp(nn.Sequential):
    """BatchNorm(C_in) -> real conv -> ReLU: the supernet's preprocessing and the CIFAR stem
    (the reference code names it ``ReLUConvBN`` but computes in this order)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in, affine=affine)
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.relu = nn.ReLU(inplace=False)


class Zero(nn.Module):
    """``zeroise``: outputs zeros, spatially strided when the edge reduces."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Multiplying (rather than allocating zeros) keeps the input in the graph, so the
        # layers feeding it get zero gradients and weight decay, as in the reference.
        s = self.stride
        return (x if s == 1 else x[:, :, ::s, ::s]).mul(0.0)


class Identity(nn.Identity):
    """``skip`` at stride 1; drop path is never applied to it."""


class BinFactorizedReduce(nn.Module):
    """``skip`` on a reducing edge: two binary 1x1 stride-2 convolutions, the second on the
    input shifted by one pixel, concatenated (DARTS's factorized reduce, in BNAS's binary
    template: BatchNorm -> binary conv -> ReLU)."""

    def __init__(self, c_in: int, c_out: int, binarizer: Binarizer, affine: bool = True) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in, affine=affine)
        self.conv_a = binarizer.conv(c_in, c_out // 2, 1, stride=2)
        self.conv_b = binarizer.conv(c_in, c_out - c_out // 2, 1, stride=2)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(x)
        shifted = nn.functional.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.relu(torch.cat([self.conv_a(x), self.conv_b(shifted)], dim=1))


# -- the operations' factories (:data:`bnas.ops.registry.OPS` names them) ------------------------
def zeroise(c: int, stride: int, binarizer: Binarizer, affine: bool) -> nn.Module:
    return Zero(stride)


def max_pool_3x3(c: int, stride: int, binarizer: Binarizer, affine: bool) -> nn.Module:
    return nn.MaxPool2d(3, stride=stride, padding=1)


def avg_pool_3x3(c: int, stride: int, binarizer: Binarizer, affine: bool) -> nn.Module:
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


def bin_conv(c: int, stride: int, binarizer: Binarizer, affine: bool, *, kernel: int,
             dilation: int) -> nn.Module:
    """A ``kernel`` x ``kernel`` binary convolution op, padded to keep the size at stride 1."""
    return BinConvOp(c, c, kernel, stride, dilation * (kernel - 1) // 2, binarizer,
                     dilation=dilation, affine=affine)


def skip(c: int, stride: int, binarizer: Binarizer, affine: bool) -> nn.Module:
    return Identity() if stride == 1 else BinFactorizedReduce(c, c, binarizer, affine=affine)
