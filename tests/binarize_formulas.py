"""Hand-written forward and backward formulas the binarizer tests compare against.

Everything here is derived on paper and written with elementary float64 tensor operations;
none of it calls into :mod:`bnas`. The convolution and its two adjoints are the only library
calls (``F.conv2d``, ``torch.nn.grad.conv2d_input`` / ``conv2d_weight``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# A small layer with every convolution argument that matters: 6 -> 5 channels, 3x3 kernels,
# so N = 54 = 6 x 9 for RBNN's rotation (a != b).
IN, OUT, KERNEL = 6, 5, 3
GEOMETRIES = {
    "plain": dict(stride=1, padding=1, dilation=1),
    "strided_dilated": dict(stride=2, padding=2, dilation=2),
}


def seeded(*shape: int, seed: int) -> torch.Tensor:
    """A float64 standard-normal tensor from its own generator."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``(first dimension, everything else)``."""
    return x.reshape(x.shape[0], -1)


def normalize(v: torch.Tensor, eps: float, center: bool = True) -> torch.Tensor:
    """``(v - m) / d`` (or ``v / d``) per row, ``d = sqrt(var + eps)``, ``var`` unbiased."""
    r = rows(v)
    n = r.shape[1]
    m = r.sum(dim=1, keepdim=True) / n
    c = r - m
    d = torch.sqrt((c * c).sum(dim=1, keepdim=True) / (n - 1) + eps)
    return ((c if center else r) / d).view_as(v)


def normalize_backward(v: torch.Tensor, dy: torch.Tensor, eps: float,
                       center: bool = True) -> torch.Tensor:
    """Gradient w.r.t. ``v`` of ``sum(dy * normalize(v))``.

    With ``c = v - m`` and ``d = sqrt(sum(c^2)/(n-1) + eps)``, ``dd/dv_i = c_i / ((n-1) d)``:
    centred:     ``dv_i = (dy_i - mean(dy)) / d - c_i * sum(dy * c) / ((n-1) d^3)``;
    not centred: ``dv_i = dy_i / d - c_i * sum(dy * v) / ((n-1) d^3)``.
    """
    r, g = rows(v), rows(dy)
    n = r.shape[1]
    c = r - r.sum(dim=1, keepdim=True) / n
    d = torch.sqrt((c * c).sum(dim=1, keepdim=True) / (n - 1) + eps)
    if center:
        direct = (g - g.sum(dim=1, keepdim=True) / n) / d
        through_d = c * (g * c).sum(dim=1, keepdim=True) / ((n - 1) * d ** 3)
    else:
        direct = g / d
        through_d = c * (g * r).sum(dim=1, keepdim=True) / ((n - 1) * d ** 3)
    return (direct - through_d).view_as(v)


def conv(ba: torch.Tensor, bw: torch.Tensor, geometry: dict) -> torch.Tensor:
    return F.conv2d(ba, bw, None, **geometry)


def conv_input_grad(x_shape, bw: torch.Tensor, gy: torch.Tensor, geometry: dict) -> torch.Tensor:
    return torch.nn.grad.conv2d_input(x_shape, bw, gy, **geometry)


def conv_weight_grad(ba: torch.Tensor, w_shape, gy: torch.Tensor, geometry: dict) -> torch.Tensor:
    return torch.nn.grad.conv2d_weight(ba, w_shape, gy, **geometry)


def bireal_slope(x: torch.Tensor) -> torch.Tensor:
    """Bi-Real's sign derivative ``max(0, 2 - 2|x|)``."""
    return torch.clamp(2.0 - 2.0 * x.abs(), min=0.0)


def run_layer(layer: torch.nn.Module, x: torch.Tensor, g: torch.Tensor):
    """Forward ``x`` through ``layer`` and back-propagate ``g``; returns ``(y, x.grad)``."""
    x = x.clone().requires_grad_(True)
    y = layer(x)
    y.backward(g)
    return y.detach(), x.grad


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-11)


def assert_layer(layer: torch.nn.Module, got: tuple, expected: tuple, **grads: torch.Tensor) -> None:
    """``got = (y, x.grad)`` equals ``expected``, and each parameter of ``layer`` named in
    ``grads`` has that gradient."""
    for a, b in zip(got, expected):
        assert_close(a, b)
    for name, grad in grads.items():
        assert_close(getattr(layer, name).grad, grad)
