"""Memory-lean autograd functions for training binary operations, same maths as the modules.

BNAS's binary operation (Kim et al., ECCV 2020, Sec. 3.1) is ``relu(s * conv(b(BN(x)), W_b))``:
BatchNorm in training mode, the scheme's activation binarizer ``b`` (``binarize_input``), a
convolution with the scheme's +-1 weight ``W_b`` (``binary_weight``), its optional
per-channel scale ``s`` (``weight_scale``) and a ReLU, optionally times a per-sample
drop-path factor. On the reference path (the modules), autograd keeps the normalised input, its binary copy,
the binarizer's own tensors and the float output. :class:`BinaryConvRelu` keeps only ``x``
(which its other users keep anyway), the batch statistics and a one-bit ReLU mask; the backward
pass recomputes the normalised input and its binarization, and takes the activation gradient by
running ``binarize_input`` under autograd on it, so every scheme's own straight-through rule
applies unchanged. The latent weight's gradient goes through ``binary_weight()`` as usual.

Both passes normalise with the kernel :class:`~torch.nn.BatchNorm2d` runs (the backward pass
without running statistics), so the recomputed binary input is bit-identical to the forward one
and to the reference path's (a sign is sensitive to the last bit of a value near zero).
The convolution is ``F.conv2d`` of the +-1 tensors as in the modules, whose sums are exact
integers, and the scale is one multiply per element as there, so the output (and which side of
zero it falls, which the ReLU's gradient depends on) is bit-identical to the modules'. Under
autocast the reference path runs instead.

The element-wise passes around the convolution come in two implementations: :class:`TorchPasses`
(torch's kernels; every scheme, dtype and device) and :class:`FusedPasses` (the CPU kernels of
:mod:`bnas.ops.native`, for float32 NCHW tensors and the activation binarizers they implement:
sign with the clipped straight-through gradient, and ReCU's), which read each tensor fewer
times. Their forward values are bit-identical; their gradients differ only in the order of
floating-point sums.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..binarize.base import BinaryConv2d, FusedInput
from ..binarize.conv import conv_backward, conv_geometry, split_folded_gradient
from ..binarize.ste import masked, pack_mask, unpack_mask
from . import native


def bn_momentum(bn: nn.BatchNorm2d) -> float:
    """The running-statistics factor of ``bn``'s next training step (as ``BatchNorm2d.forward``,
    which also counts the batch)."""
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


def drop_factor(n: int, like: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Drop path's per-sample factor ``mask / keep`` ``(n, 1, 1, 1)``: zero with probability
    ``drop_prob``, ``1 / (1 - drop_prob)`` otherwise (FractalNet; DARTS's ``drop_path``)."""
    keep = 1.0 - drop_prob
    mask = torch.empty(n, 1, 1, 1, device=like.device, dtype=like.dtype).bernoulli_(keep)
    return mask.div_(keep)


def batch_normalize(x: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None,
               eps: float) -> torch.Tensor:
    """BatchNorm of ``x`` with its batch statistics, by the kernel ``BatchNorm2d`` uses (so the
    result is bit-identical to the forward pass's), without touching running statistics."""
    return torch.ops.aten.native_batch_norm(x, gamma, beta, None, None, True, 0.0, eps)[0]


InputGrads = Callable[[torch.Tensor, tuple[bool, bool, bool]], tuple[torch.Tensor | None, ...]]


class TorchPasses:
    """The element-wise passes of :class:`BinaryConvRelu` on torch's kernels: any scheme, dtype
    and device. The backward pass differentiates the scheme's ``binarize_input`` with autograd."""

    @staticmethod
    def binarize(x: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None,
                 bn: nn.BatchNorm2d, momentum: float, conv: BinaryConv2d
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(b(BN(x)), mean, invstd)``, updating ``bn``'s running statistics."""
        z, mean, invstd = torch.ops.aten.native_batch_norm(
            x, gamma, beta, bn.running_mean, bn.running_var, True, momentum, bn.eps)
        return conv.binarize_input(z), mean, invstd

    @staticmethod
    def relu_mask_(y: torch.Tensor, scale: torch.Tensor | None,
                   factor: torch.Tensor | None) -> torch.Tensor:
        """``y = relu(y * scale) * factor`` in place; returns where the ReLU passed, packed."""
        if scale is not None:
            y.mul_(scale)
        mask = pack_mask(y.relu_() > 0)
        if factor is not None:
            y.mul_(factor)
        return mask

    @staticmethod
    def mask_grad(g: torch.Tensor, mask: torch.Tensor, factor: torch.Tensor | None) -> torch.Tensor:
        """The gradient at the convolution's output (before the scale)."""
        gy = masked(g, unpack_mask(mask, g.shape))
        return gy if factor is None else gy.mul_(factor)

    @staticmethod
    def rebinarize(x: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None,
                   mean: torch.Tensor, invstd: torch.Tensor, bn: nn.BatchNorm2d,
                   conv: BinaryConv2d) -> tuple[torch.Tensor, InputGrads]:
        """The forward pass's ``b(BN(x))`` again, and the function that takes its gradient to
        the gradients of ``x``, ``gamma`` and ``beta``."""
        z = batch_normalize(x, gamma, beta, bn.eps)
        with torch.enable_grad():
            xb = conv.binarize_input(z.requires_grad_())

        def input_grads(dxb: torch.Tensor, need: tuple[bool, bool, bool]):
            nonlocal z, xb
            (dz,) = torch.autograd.grad(xb, z, dxb)
            z = xb = None  # freed before BatchNorm's backward pass
            return torch.ops.aten.native_batch_norm_backward(
                dz, x, gamma, None, None, mean, invstd, True, bn.eps,
                [need[0], need[1] and gamma is not None, need[2] and beta is not None])
        return xb.detach(), input_grads


class FusedPasses:
    """The passes of :class:`TorchPasses` (same signatures) through :mod:`bnas.ops.native`'s
    kernels, for the activation binarizer sign with the clipped straight-through gradient
    (:class:`~bnas.binarize.base.SignInputConv2d`): bit-identical forward values, gradients
    equal up to the order of floating-point sums. One instance serves one call of
    :class:`BinaryConvRelu`."""

    def __init__(self, kernels: native.Kernels) -> None:
        self.k = kernels

    def binarize(self, x: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None,
                 bn: nn.BatchNorm2d, momentum: float, conv: BinaryConv2d
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.k.bn_sign_forward(x, gamma, beta, bn.running_mean, bn.running_var,
                                      momentum, bn.eps)

    def relu_mask_(self, y: torch.Tensor, scale: torch.Tensor | None,
                   factor: torch.Tensor | None) -> torch.Tensor:
        return self.k.relu_mask_(y, scale, factor)

    def mask_grad(self, g: torch.Tensor, mask: torch.Tensor,
                  factor: torch.Tensor | None) -> torch.Tensor:
        return self.k.mask_grad(g, mask, factor)

    def rebinarize(self, x: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None,
                   mean: torch.Tensor, invstd: torch.Tensor, bn: nn.BatchNorm2d,
                   conv: BinaryConv2d) -> tuple[torch.Tensor, InputGrads]:
        def input_grads(dxb: torch.Tensor, need: tuple[bool, bool, bool]):
            return self.input_backward(dxb, x, gamma, beta, mean, invstd, need)
        return self.k.bn_sign(x, gamma, beta, mean, invstd), input_grads

    def input_backward(self, dxb: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor | None,
                       beta: torch.Tensor | None, mean: torch.Tensor, invstd: torch.Tensor,
                       need: tuple[bool, bool, bool]) -> tuple[torch.Tensor | None, ...]:
        """The gradients of ``x``, ``gamma`` and ``beta`` from that of the binary input."""
        return self.k.bn_sign_backward(dxb, x, gamma, beta, mean, invstd, need)


class FusedScaledBirealPasses(FusedPasses):
    """:class:`FusedPasses` for ReCU's training-mode activation binarizer: ``sign(z / d)`` per
    sample (``d = sqrt(var + eps)``; the sign is ``sign(z)``, so the forward pass is the same)
    with Bi-Real's gradient through the scaling (:class:`~bnas.binarize.recu.ReCUConv2d`)."""

    def binarize(self, x, gamma, beta, bn, momentum, conv):
        xb, mean, invstd = super().binarize(x, gamma, beta, bn, momentum, conv)
        self.moments = self.k.sample_moments(x, gamma, beta, mean, invstd, conv.activation_eps)
        return xb, mean, invstd

    def input_backward(self, dxb, x, gamma, beta, mean, invstd, need):
        return self.k.scaled_bireal_backward(dxb, x, gamma, beta, mean, invstd, *self.moments,
                                             need)


#: The fused passes by the activation binarizer they compute (``BinaryConv2d.fused_input``).
FUSED_PASSES: dict[FusedInput, type[FusedPasses]] = {
    FusedInput.SIGN_CLIPPED: FusedPasses, FusedInput.SCALED_BIREAL: FusedScaledBirealPasses}


def fused_input(conv: BinaryConv2d) -> FusedInput | None:
    """``conv``'s declared ``fused_input``, where its ``binarize_input`` is the one declared
    with it (not overridden by a subclass), else None."""
    for cls in type(conv).__mro__:
        if "fused_input" in vars(cls):
            own = type(conv).binarize_input is vars(cls).get("binarize_input")
            return vars(cls)["fused_input"] if own else None
    return None


def passes(x: torch.Tensor, bn: nn.BatchNorm2d,
           conv: BinaryConv2d) -> TorchPasses | FusedPasses:
    """The fused passes where they apply to ``x``, ``bn`` and ``conv``, else torch's."""
    kind = fused_input(conv)
    if (kind is not None and conv.training and native.Kernels.accepts(
            x, bn.weight, bn.bias, bn.running_mean, bn.running_var)):
        kernels = native.kernels()
        if kernels is not None:
            return FUSED_PASSES[kind](kernels)
    return TorchPasses()


class BinaryConvRelu(torch.autograd.Function):
    """``relu(s * conv(b(BN(x)), W_b)) * f`` of a :class:`~bnas.ops.BinConvOp` in training mode
    (see the module docstring); ``f`` is the optional drop-path factor ``(N, 1, 1, 1)``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None,
                weight: torch.Tensor, scale: torch.Tensor | None, factor: torch.Tensor | None,
                bn: nn.BatchNorm2d, conv: BinaryConv2d) -> torch.Tensor:
        ops = passes(x, bn, conv)
        xb, mean, invstd = ops.binarize(x, gamma, beta, bn, bn_momentum(bn), conv)
        y = F.conv2d(xb, weight, None, *conv_geometry(conv))
        del xb
        mask = ops.relu_mask_(y, scale, factor)
        ctx.bn, ctx.conv, ctx.ops = bn, conv, ops
        ctx.save_for_backward(x, gamma, beta, weight, scale, factor, mean, invstd, mask)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, gamma, beta, weight, scale, factor, mean, invstd, mask = ctx.saved_tensors
        need_x, need_gamma, need_beta, need_weight, need_scale = ctx.needs_input_grad[:5]
        bn, conv, ops = ctx.bn, ctx.conv, ctx.ops
        gy = ops.mask_grad(g, mask, factor)
        xb, input_grads = ops.rebinarize(x, gamma, beta, mean, invstd, bn, conv)
        folded = weight if scale is None else weight * scale.view(-1, 1, 1, 1)
        need_dx = need_x or need_gamma or need_beta
        dxb, dw = conv_backward(gy, xb, folded, conv_geometry(conv),
                                (need_dx, need_weight or need_scale))
        del gy, xb
        g_weight = g_scale = None
        if dw is not None:
            g_weight, g_scale = split_folded_gradient(dw, weight, scale, (need_weight, need_scale))
        dx = g_gamma = g_beta = None
        if need_dx:
            dx, g_gamma, g_beta = input_grads(dxb, (need_x, need_gamma, need_beta))
        return dx, g_gamma, g_beta, g_weight, g_scale, None, None, None


def binary_conv_relu(bn: nn.BatchNorm2d, conv: BinaryConv2d, x: torch.Tensor,
                     factor: torch.Tensor | None = None) -> torch.Tensor:
    """``relu(conv(bn(x))) * factor`` in training mode through :class:`BinaryConvRelu`."""
    scale = conv.weight_scale()
    scale = None if scale is None else scale.view(1, -1, 1, 1)
    return BinaryConvRelu.apply(x, bn.weight, bn.bias, conv.binary_weight(), scale, factor, bn,
                                conv)


def lean_capable(bn: nn.BatchNorm2d, conv: nn.Module) -> bool:
    """Whether :func:`binary_conv_relu` computes ``relu(conv(bn(x)))`` for these modules."""
    return (isinstance(conv, BinaryConv2d) and conv.bias is None and conv.groups == 1
            and type(bn) is nn.BatchNorm2d and bn.track_running_stats
            and (bn.weight is None) == (bn.bias is None))


def cell_output(like: torch.Tensor, shape: Sequence[int], residual: torch.Tensor | None,
                nodes: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """``cat(nodes, dim=1) + residual`` written straight into one tensor of ``shape`` per node
    (dtype and device of ``like``); a node given as None is all zeros (it costs nothing)."""
    channels = shape[1]
    out = like.new_empty(shape[0], channels * len(nodes), *shape[2:])
    for i, node in enumerate(nodes):
        part = out[:, i * channels:(i + 1) * channels]
        r = None if residual is None else residual[:, i * channels:(i + 1) * channels]
        if node is None:
            part.zero_() if r is None else part.copy_(r)
        elif r is None:
            part.copy_(node)
        else:
            torch.add(r, node, out=part)
    return out


class CellOutput(torch.autograd.Function):
    """:func:`cell_output` with its gradient. Parameters in ``dead`` (those of operations whose
    output only ever meets ``zeroise``) get the zero gradient the reference path gives them."""

    @staticmethod
    def forward(ctx, like: torch.Tensor, shape: Sequence[int], residual: torch.Tensor | None,
                n_dead: int, *tensors: torch.Tensor | None) -> torch.Tensor:
        nodes = tensors[n_dead:]
        out = cell_output(like, shape, residual, nodes)
        ctx.channels, ctx.n_dead = shape[1], n_dead
        ctx.present = [t is not None for t in nodes]
        ctx.save_for_backward(*tensors[:n_dead])
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        c = ctx.channels
        dead = [torch.zeros_like(p) for p in ctx.saved_tensors]
        nodes = [g[:, i * c:(i + 1) * c] if present else None
                 for i, present in enumerate(ctx.present)]
        return (None, None, g if ctx.needs_input_grad[2] else None, None, *dead, *nodes)


def set_lean(model: nn.Module, enabled: bool) -> None:
    """Switch every module of ``model`` with a lean training path (``lean`` attribute) to it, or
    back to the reference path (its sub-modules one after the other, which tests compare with)."""
    for module in model.modules():
        if hasattr(module, "lean"):
            module.lean = enabled
