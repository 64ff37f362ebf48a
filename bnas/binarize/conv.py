"""The arithmetic of a binary convolution: ``conv(x_b, S) * s``, ``S`` the +-1 weight and ``s``
its per-output-channel scale.

The convolution of +-1 (or 0) tensors sums integers, exact in float32 in any order of
summation (while ``|sum| < 2**24``), and the scale is one multiply per output element, so the
output is ``s * integer`` rounded once, whatever the kernel, the memory layout or the engine
(a popcount engine computes the same integer). Multiplying the scale into the weight first,
``conv(x_b, s * S)``, is the same maths but rounds at every accumulation.

The backward pass runs the convolution's adjoints once on the folded weight ``F = s * S``
(``conv(x, S) * s = conv(x, F)``, so ``dx = conv^T(g, F)`` and ``dF = conv_w(g, x)``) and splits
``dF`` into the gradients of ``S`` (``s * dF``) and ``s`` (``sum(S * dF)`` per channel): weight-sized
work instead of activation-sized products, and no float copy of the convolution's output kept.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Geometry = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # stride, padding, dilation


def conv_geometry(conv: nn.Conv2d) -> Geometry:
    """``(stride, padding, dilation)`` of ``conv``."""
    return conv.stride, conv.padding, conv.dilation


def conv_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, geometry: Geometry,
                  mask: tuple[bool, bool], groups: int = 1) -> tuple[torch.Tensor | None, ...]:
    """The input and weight gradients of ``conv2d(x, weight)`` that ``mask`` asks for."""
    stride, padding, dilation = geometry
    dx, dw, _ = torch.ops.aten.convolution_backward(
        grad, x, weight, None, stride, padding, dilation, False, [0, 0], groups,
        [mask[0], mask[1], False])
    return dx, dw


def split_folded_gradient(d_folded: torch.Tensor, sign: torch.Tensor, scale: torch.Tensor | None,
                          need: tuple[bool, bool]) -> tuple[torch.Tensor | None, ...]:
    """The gradients of ``sign`` and ``scale`` (those ``need`` asks for) from ``d_folded``, the
    gradient of the folded weight ``scale * sign`` (``scale`` per output channel, any shape with
    ``O`` elements, or None): ``scale * d_folded`` and ``sum(sign * d_folded)`` per channel."""
    if scale is None:
        return (d_folded if need[0] else None), None
    g_sign = d_folded * scale.reshape(-1, 1, 1, 1) if need[0] else None
    g_scale = (d_folded * sign).sum(dim=(1, 2, 3)).view_as(scale) if need[1] else None
    return g_sign, g_scale


def scale_channels(y: torch.Tensor, scale: torch.Tensor | None,
                   inplace: bool = False) -> torch.Tensor:
    """``y * scale`` per output channel (``scale`` ``(O,)``, or None for no scale), in ``y``'s
    dtype (under autocast the scale is rounded to the low-precision type, as a weight would be);
    in place in ``y`` if ``inplace``."""
    if scale is None:
        return y
    scale = scale.view(1, -1, 1, 1).to(y.dtype)
    return y.mul_(scale) if inplace else y * scale


class ScaledConv(torch.autograd.Function):
    """``conv(x_b, sign) * scale`` with the backward pass of the module docstring."""

    @staticmethod
    def forward(ctx, xb: torch.Tensor, sign: torch.Tensor, scale: torch.Tensor | None,
                geometry: Geometry, groups: int) -> torch.Tensor:
        y = scale_channels(F.conv2d(xb, sign, None, *geometry, groups), scale, inplace=True)
        ctx.geometry, ctx.groups = geometry, groups
        ctx.save_for_backward(xb, sign, scale)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        xb, sign, scale = ctx.saved_tensors
        need_x, need_sign, need_scale = ctx.needs_input_grad[:3]
        folded = sign if scale is None else sign * scale.view(-1, 1, 1, 1)
        dx, d_folded = conv_backward(g, xb, folded, ctx.geometry,
                                     (need_x, need_sign or need_scale), ctx.groups)
        g_sign = g_scale = None
        if d_folded is not None:
            g_sign, g_scale = split_folded_gradient(d_folded, sign, scale, (need_sign, need_scale))
        return dx, g_sign, g_scale, None, None


def scaled_conv(xb: torch.Tensor, sign: torch.Tensor, scale: torch.Tensor | None,
                geometry: Geometry, groups: int = 1) -> torch.Tensor:
    """``conv(x_b, sign) * scale`` (module docstring). Under autocast, where the convolution runs
    in a lower precision than its saved inputs, autograd differentiates the two operations."""
    if torch.is_autocast_enabled(xb.device.type):
        return scale_channels(F.conv2d(xb, sign, None, *geometry, groups), scale)
    return ScaledConv.apply(xb, sign, scale, geometry, groups)
