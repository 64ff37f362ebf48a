"""The fast search path's autograd functions and the memory layout they share
(:mod:`bnas.search.fanout` computes a node's outgoing edges with them).

:class:`BinaryMix` is the weighted sum of a node's stacked binary convolutions and
edge-independent terms, keeping one bit per convolution and element for its backward pass;
:class:`PoolNorm` (a node's poolings, each followed by ``BatchNorm(affine=False)``) and
:class:`NormConvRelu` (the search cells' real preprocessing, :class:`LeanRealConvOp`) keep
only tensors that other operations keep anyway and recompute the rest in the backward pass;
binary inputs and +-1 weights are kept as int8 (:func:`_compact`). Every function computes
exactly what the modules it replaces compute (``tests/test_search_mixed.py``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from ..binarize.conv import Geometry, scale_channels, split_folded_gradient
from ..binarize.conv import conv_backward as _conv_backward
from ..binarize.conv import conv_geometry as _geometry
from ..binarize.ste import masked
from ..ops import RealConvOp
from ..ops.lean import batch_normalize
from ..ops.lean import bn_momentum as _momentum


# Data types whose convolutions (oneDNN on CPUs, cuDNN) run faster channels-last. float64 (the
# equivalence tests) keeps PyTorch's native NCHW kernels, whose sums do not depend on how many
# output channels a convolution computes (their native channels-last ones do).
_CHANNELS_LAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _channels_last(x: torch.Tensor) -> bool:
    """Whether the fast path lays ``x``'s data type out channels-last."""
    return x.dtype in _CHANNELS_LAST_DTYPES


def fast_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(N, C, H, W)`` in the fast path's memory layout (a no-op when it already is);
    every operation of the fast path then keeps that layout."""
    if _channels_last(x):
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


def _edge_layout(a: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``a`` ``(N, E, C, H, W)`` laid out as a stacked convolution's output viewed per edge:
    ``(N, H, W, E, C)`` in memory when channels-last, else contiguous."""
    if channels_last:
        return a.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
    return a.contiguous()


def _per_edge_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``<a[:, e], b>`` for each edge ``e`` of ``a`` ``(N, E, C, H, W)`` (see
    :func:`_edge_layout`) and ``b`` ``(N, C, H, W)`` in the same layout."""
    n, edges, channels = a.shape[:3]
    if a.is_contiguous():
        return torch.bmm(a.view(n, edges, -1), b.reshape(n, -1, 1)).sum(dim=0).view(edges)
    # Channels-last: per pixel an E x C by C product, summed over pixels.
    pixels = a.permute(0, 3, 4, 1, 2).reshape(-1, edges, channels)
    return torch.bmm(pixels, b.permute(0, 2, 3, 1).reshape(-1, channels, 1)).sum(dim=0).view(edges)


def _add_edge_sum_(out: torch.Tensor, a: torch.Tensor, weights: torch.Tensor) -> None:
    """``out += sum_e weights[e] * a[:, e]`` for ``a`` ``(N, E, ...)``."""
    for e in range(a.shape[1]):
        out.addcmul_(a[:, e], weights[e])


def _pack_masks(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Boolean masks (at most 8, same shape) as the bits of one byte per element."""
    packed = masks[0].view(torch.uint8)
    for k, mask in enumerate(masks[1:], start=1):
        packed = packed.add(mask.view(torch.uint8), alpha=1 << k)
    return packed


def _unpack_mask(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Mask ``k`` of :func:`_pack_masks` as 0 / 1 bytes (multiplying by them is faster than
    ``torch.where`` on CPUs)."""
    return torch.bitwise_right_shift(packed, k).bitwise_and_(1)


def _per_channel(w: torch.Tensor, channels: int) -> torch.Tensor:
    """Per-edge factors ``(E,)`` repeated for each of an edge's ``channels`` output channels,
    shaped to scale a stacked weight ``(E*channels, ...)``."""
    return w.repeat_interleave(channels).view(-1, 1, 1, 1)


def _grouped_input_grad(g: torch.Tensor, weight: torch.Tensor, x_shape: torch.Size,
                        geometry: Geometry, edges: int) -> torch.Tensor:
    """``conv^T(g_e, W_e)`` for each edge: the input gradients ``(N, E, C_in, H, W)`` of the
    ``E`` convolutions stacked in ``weight``, as one grouped transposed convolution (in the
    layout of ``g``; ``torch.nn.grad.conv2d_input`` would make it contiguous)."""
    stride, padding, dilation = geometry
    out_padding = [x_shape[2 + i] - ((g.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                                     + dilation[i] * (weight.shape[2 + i] - 1) + 1) for i in (0, 1)]
    dx = F.conv_transpose2d(g, weight, None, stride, padding, out_padding, edges, dilation)
    return dx.view(x_shape[0], edges, *x_shape[1:])


class BinaryMix(torch.autograd.Function):
    """``out[:, e] = sum_k w[e, k] relu(conv(xb, S_k)[:, e] * s_k) + sum_l u[e, l] L_l``.

    ``xb`` is the binary input ``(N, C_in, H, W)``; ``S_k`` stacks the +-1 weights of all ``E``
    edges for kernel geometry ``k`` (``E*C`` output channels) and ``s_k`` their per-channel
    scales ``(E*C,)`` (None for a scheme without scales); ``L_l`` are edge-independent terms
    (pooling, identity). ``out`` is ``(N, E, C, H', W')``, channels-last per edge. Only the sign
    of each convolution's output is kept for the backward pass, as one bit per convolution of
    one byte per element, and the stacked +-1 weights as int8. The terms are not kept either:
    ``remake_linear()`` computes them again when their weights ``u`` need a gradient (the
    architecture step).

    The backward pass works with the folded weight ``F_k = s_k * S_k`` and scales the small
    stacked weights by the edge weights instead of the large output gradients:
    ``conv^T(w_e g, F_e) = conv^T(g, w_e F_e)`` and ``dF_e(w_e g) = w_e dF_e(g)`` (both
    linear); :func:`~bnas.binarize.conv.split_folded_gradient` turns ``dF`` into the gradients of
    ``S`` and ``s``.
    """

    @staticmethod
    def forward(ctx, geometry: Sequence[Geometry], channels: int, w: torch.Tensor, u: torch.Tensor,
                xb: torch.Tensor | None, remake_linear: Callable[[], list[torch.Tensor]],
                *tensors: torch.Tensor | None) -> torch.Tensor:
        k_convs = len(geometry)
        signs, scales = tensors[:k_convs], tensors[k_convs:2 * k_convs]
        linear = tensors[2 * k_convs:]
        edges = w.shape[0]
        out: torch.Tensor | None = None
        masks = []
        for k, (stride, padding, dilation) in enumerate(geometry):
            y = F.conv2d(xb, signs[k], None, stride, padding, dilation)
            y = scale_channels(y, scales[k], inplace=True).relu_()
            y = y.view(y.shape[0], edges, channels, *y.shape[2:])
            wk = w[:, k].view(1, edges, 1, 1, 1)
            out = y * wk if out is None else out.addcmul_(y, wk)
            masks.append(y > 0)
        for l, term in enumerate(linear):
            ul = u[:, l].view(1, edges, 1, 1, 1)
            if out is None:
                out = _edge_layout(term.unsqueeze(1) * ul, _channels_last(term))
            else:
                out.addcmul_(term.unsqueeze(1), ul)
        ctx.geometry, ctx.channels_last = tuple(geometry), _channels_last(out)
        ctx.x_dtype = None if xb is None else xb.dtype
        ctx.sign_dtypes = [sign.dtype for sign in signs]
        # The terms are only needed for their weights' gradients, and remade for them; a
        # binary input and the +-1 weights are kept in one byte per value.
        ctx.remake_linear, ctx.n_linear = remake_linear, len(linear)
        packed = _pack_masks(masks) if masks else None
        ctx.save_for_backward(_compact(xb), w, u, packed, *map(_compact, signs), *scales)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        k_convs = len(ctx.geometry)
        xb, w, u, packed, *rest = ctx.saved_tensors
        xb = None if xb is None else xb.to(ctx.x_dtype)
        signs = [sign.to(dtype) for sign, dtype in zip(rest[:k_convs], ctx.sign_dtypes)]
        scales = rest[k_convs:]
        need_w, need_u, need_x = ctx.needs_input_grad[2:5]
        need_signs = ctx.needs_input_grad[6:6 + k_convs]
        need_scales = ctx.needs_input_grad[6 + k_convs:6 + 2 * k_convs]
        need_linear = ctx.needs_input_grad[6 + 2 * k_convs:]
        with torch.no_grad():
            linear = ctx.remake_linear() if need_u else [None] * ctx.n_linear
        g = _edge_layout(g, ctx.channels_last)
        n, edges, channels, h, wd = g.shape
        gw = torch.zeros_like(w) if need_w else None
        gu = torch.zeros_like(u) if need_u else None
        gx = torch.zeros_like(xb) if need_x else None
        g_signs: list[torch.Tensor | None] = [None] * k_convs
        g_scales: list[torch.Tensor | None] = [None] * k_convs
        for k, geometry in enumerate(ctx.geometry):
            need_folded = need_signs[k] or need_scales[k]
            if not (need_w or need_x or need_folded):
                continue
            folded = signs[k] if scales[k] is None else signs[k] * scales[k].view(-1, 1, 1, 1)
            edge = _per_channel(w[:, k], channels)
            gm = (g * _unpack_mask(packed, k)).view(n, -1, h, wd)
            d_folded = None
            if need_w:
                # Per-edge input gradients conv^T(g_e * mask_e, F_e): a grouped transposed
                # convolution; <., xb> per edge is d loss / d w[e, k].
                dx = _grouped_input_grad(gm, folded, xb.shape, geometry, edges)
                gw[:, k] = _per_edge_dot(dx, xb)
                if need_x:
                    _add_edge_sum_(gx, dx, w[:, k])
                if need_folded:
                    d_folded = _conv_backward(gm, xb, folded, geometry, (False, True))[1] * edge
            else:
                dx, d_folded = _conv_backward(gm, xb, folded * edge, geometry,
                                              (need_x, need_folded))
                if need_x:
                    gx += dx
                if need_folded:
                    d_folded = d_folded * edge
            if need_folded:
                g_signs[k], g_scales[k] = split_folded_gradient(
                    d_folded, signs[k], scales[k], (need_signs[k], need_scales[k]))
        g_linear = []
        for l, term in enumerate(linear):
            if need_u:
                gu[:, l] = _per_edge_dot(g, term)
            if need_linear[l]:
                g_l = torch.zeros_like(g[:, 0])
                _add_edge_sum_(g_l, g, u[:, l])
                g_linear.append(g_l)
            else:
                g_linear.append(None)
        return (None, None, gw, gu, gx, None, *g_signs, *g_scales, *g_linear)


class PoolNorm(torch.autograd.Function):
    """``BatchNorm(affine=False)(pool(x))`` for each of a node's poolings, in training mode.

    Only ``x`` (which the node's other operations keep anyway) and the batch statistics are
    kept for the backward pass, which recomputes the poolings, instead of each pooled tensor,
    its normalised copy and (max pooling) 8-byte argmax indices. Everything is channels-last
    (PyTorch's vectorised CPU kernels; same values).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, pools: Sequence[nn.Sequential]) -> tuple[torch.Tensor, ...]:
        xc = fast_layout(x)
        outs, stats = [], []
        for op, bn in pools:
            y, mean, invstd = torch.ops.aten.native_batch_norm(
                _pooled(op, xc), None, None, bn.running_mean, bn.running_var, True,
                _momentum(bn), bn.eps)
            outs.append(y)
            stats += [mean, invstd]
        ctx.pools = pools
        ctx.save_for_backward(x, *stats)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        x, *stats = ctx.saved_tensors
        xc = fast_layout(x)
        gx = torch.zeros_like(xc)
        for i, ((op, bn), g) in enumerate(zip(ctx.pools, grads)):
            if g is None:
                continue
            g = fast_layout(g)
            if isinstance(op, nn.MaxPool2d):
                args = [_pair(v) for v in (op.kernel_size, op.stride, op.padding, op.dilation)]
                pooled, where = torch.ops.aten.max_pool2d_with_indices(xc, *args, op.ceil_mode)
            else:
                pooled = op(xc)
            gp = torch.ops.aten.native_batch_norm_backward(
                g, pooled, None, None, None, stats[2 * i], stats[2 * i + 1], True, bn.eps,
                [True, False, False])[0]
            if isinstance(op, nn.MaxPool2d):
                gx += torch.ops.aten.max_pool2d_with_indices_backward(gp, xc, *args, op.ceil_mode,
                                                                      where)
            else:
                gx += torch.ops.aten.avg_pool2d_backward(gp, xc, op.kernel_size, op.stride,
                                                         op.padding, op.ceil_mode,
                                                         op.count_include_pad, op.divisor_override)
        return gx, None


def _pooled(op: nn.Module, xc: torch.Tensor) -> torch.Tensor:
    if isinstance(op, nn.MaxPool2d):
        return F.max_pool2d(xc, op.kernel_size, op.stride, op.padding, op.dilation, op.ceil_mode)
    return op(xc)


def _training(pools: Sequence[nn.Sequential]) -> bool:
    """Whether the poolings' BatchNorms normalise with batch statistics."""
    return bool(pools) and pools[0][1].training


def pooled_norms(pools: Sequence[nn.Sequential], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``BatchNorm(pool(x))`` for each search pooling (see :func:`search_op`)."""
    return PoolNorm.apply(x, pools) if _training(pools) else pool_values(pools, x)


def pool_values(pools: Sequence[nn.Sequential], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """:func:`pooled_norms`'s values (the same kernels), leaving the running statistics alone."""
    xc = fast_layout(x)
    if _training(pools):
        return tuple(batch_normalize(_pooled(op, xc), None, None, bn.eps) for op, bn in pools)
    return tuple(bn(_pooled(op, xc)) for op, bn in pools)


class NormConvRelu(torch.autograd.Function):
    """``relu(conv(BatchNorm(affine=False)(x)))`` in training mode, keeping ``x`` and the output
    (both kept by their other users anyway) instead of the normalised input, which the
    backward pass recomputes from the batch statistics."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, op: RealConvOp) -> torch.Tensor:
        bn, conv = op.bn, op.conv
        z, mean, invstd = torch.ops.aten.native_batch_norm(
            x, None, None, bn.running_mean, bn.running_var, True, _momentum(bn), bn.eps)
        out = F.conv2d(z, weight, None, conv.stride, conv.padding, conv.dilation).relu_()
        ctx.geometry, ctx.eps = _geometry(conv), bn.eps
        ctx.save_for_backward(x, weight, mean, invstd, out)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, weight, mean, invstd, out = ctx.saved_tensors
        shape = (1, -1, 1, 1)
        z = (x - mean.view(shape)) * invstd.view(shape)
        need_x, need_weight = ctx.needs_input_grad[:2]
        dz, dw = _conv_backward(masked(g, out > 0), z, weight, ctx.geometry, (need_x, need_weight))
        dx = None
        if need_x:
            dx = torch.ops.aten.native_batch_norm_backward(dz, x, None, None, None, mean, invstd,
                                                           True, ctx.eps, [True, False, False])[0]
        return dx, dw, None


class LeanRealConvOp(RealConvOp):
    """:class:`~bnas.ops.RealConvOp` without affine BatchNorm (the search cells'
    preprocessing) that trains with :class:`NormConvRelu`'s smaller memory footprint."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.bn.affine or self.conv.bias is not None:
            return super().forward(x)
        return NormConvRelu.apply(x, self.conv.weight, self)


def _compact(x: torch.Tensor | None) -> torch.Tensor | None:
    """``x`` as int8 if that keeps every value (binary activations), else ``x`` itself."""
    if x is None or not x.is_floating_point():
        return x
    small = x.to(torch.int8)
    return small if torch.equal(small.to(x.dtype), x) else x
