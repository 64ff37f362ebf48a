"""Per-sample / per-out-channel standardisation shared by RBNN, ReCU and SiMaN.

``standardize(x) = (x - mean) / sqrt(var + eps)`` for each index of the first dimension (a
sample of a batch, or an out-channel of a weight), statistics over all the other dimensions,
``var`` the unbiased variance. Both functions here are single autograd nodes with the gradient
written out (below), so a step keeps only the input and two numbers per row for the backward
pass, and makes a few passes over it instead of one per elementary operation.

With ``c = x - mean``, ``d = sqrt(sum(c^2)/(n-1) + eps)`` and ``dd/dx_i = c_i / ((n-1) d)``,
the gradient of ``sum(g * y)`` is

* centred, ``y = c / d``:      ``dx = (g - mean(g) - (c/d) * sum(g * c/d) / (n-1)) / d``;
* not centred, ``y = x / d``:  ``dx = (g - (c/d) * sum(g * x/d) / (n-1)) / d``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

#: ``slope_(y)``: a sign function's surrogate derivative at ``y``, computed in place in ``y``.
Slope = Callable[[torch.Tensor], torch.Tensor]


#: The backward pass works through the rows this many elements at a time in one small reused
#: buffer: a full-size temporary costs more in fresh memory than the arithmetic done in it.
_CHUNK = 1 << 18


def _chunks(rows: int, n: int) -> list[slice]:
    """Slices of consecutive rows of about :data:`_CHUNK` elements each."""
    step = max(1, _CHUNK // max(n, 1))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _moments(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, d, c)``: ``mean`` and ``d = sqrt(unbiased var + eps)`` of each row of ``x``, both
    ``(rows, 1)``, and the centred rows ``c = x - mean`` (a new tensor the caller may overwrite)."""
    rows = x.reshape(x.shape[0], -1)
    n = rows.shape[1]
    mean = rows.sum(dim=1, keepdim=True) / n
    centred = rows - mean
    norm = torch.linalg.vector_norm(centred, dim=1, keepdim=True)  # sqrt(sum(c^2)), no temporary
    d = torch.sqrt(norm.square_() / (n - 1) + eps)
    return mean, d, centred


def _backward(x: torch.Tensor, mean: torch.Tensor, d: torch.Tensor, g: torch.Tensor,
              center: bool) -> torch.Tensor:
    """The gradient w.r.t. ``x`` of ``sum(g * standardize(x))`` (module docstring), written into
    ``g`` (a ``(rows, n)`` tensor the function owns); ``c / d`` is recomputed chunk by chunk."""
    rows = x.reshape(x.shape[0], -1)
    n = rows.shape[1]
    parts = _chunks(*rows.shape)
    buffer = rows.new_empty(parts[0].stop, n)

    def y(part: slice) -> torch.Tensor:  # c / d of the rows in ``part``
        return torch.sub(rows[part], mean[part], out=buffer[:part.stop - part.start]).div_(d[part])

    coef = rows.new_empty(rows.shape[0], 1)  # sum(g * c/d), or sum(g * x) when not centred
    for part in parts:
        product = (y(part).mul_(g[part]) if center else
                   torch.mul(rows[part], g[part], out=buffer[:part.stop - part.start]))
        torch.sum(product, dim=1, keepdim=True, out=coef[part])
    coef /= (n - 1) * (1.0 if center else d)
    mean_g = g.sum(dim=1, keepdim=True) / n
    for part in parts:
        term = y(part).mul_(coef[part])
        if center:
            term.add_(mean_g[part])
        g[part].sub_(term).div_(d[part])
    return g.view_as(x)


class _Standardize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float, center: bool) -> torch.Tensor:
        mean, d, centred = _moments(x, eps)
        ctx.save_for_backward(x, mean, d)
        ctx.center = center
        y = centred.div_(d) if center else x.reshape(x.shape[0], -1) / d
        return y.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, mean, d = ctx.saved_tensors
        g = g.reshape(x.shape[0], -1).clone()
        return _backward(x, mean, d, g, ctx.center), None, None


class _StandardizedSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, slope_: Slope, eps: float, center: bool) -> torch.Tensor:
        mean, d, centred = _moments(x, eps)
        ctx.save_for_backward(x, mean, d)
        ctx.slope_, ctx.center = slope_, center
        # d > 0, so sign(c / d) = sign(c) and sign(x / d) = sign(x)
        rows = x.reshape(x.shape[0], -1)
        return (centred.sign_() if center else torch.sign(rows, out=centred)).view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, mean, d = ctx.saved_tensors
        rows = x.reshape(x.shape[0], -1)
        y = (rows - mean) if ctx.center else rows.clone()
        g = ctx.slope_(y.div_(d)).mul_(g.reshape(y.shape))
        return _backward(x, mean, d, g, ctx.center), None, None, None


def standardize(x: torch.Tensor, eps: float = 0.0, center: bool = True) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` for each index of the first dimension, statistics over
    all the other dimensions, ``var`` unbiased (torch's default). ``center=False`` keeps the
    numerator ``x`` (ReCU's activation scaling) while the variance is still taken about the
    mean."""
    return _Standardize.apply(x, eps, center)


def standardized_sign(x: torch.Tensor, slope_: Slope, eps: float = 0.0,
                      center: bool = True) -> torch.Tensor:
    """``sign(standardize(x, eps, center))`` with the surrogate gradient ``slope_(y)`` at the
    standardised value ``y``, then through the standardisation. Equal to composing
    :func:`standardize` with a straight-through sign, but only ``x`` is kept for the backward
    pass (no float copy of the standardised activations)."""
    return _StandardizedSign.apply(x, slope_, eps, center)
