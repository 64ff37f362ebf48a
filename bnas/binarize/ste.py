"""Straight-through sign functions shared by the binarization schemes."""
from __future__ import annotations

import torch


def masked(grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``grad`` where the boolean ``mask`` holds, 0 elsewhere. Multiplying by the mask's bytes
    saves the conversion to floats that multiplying by the booleans makes first, and is faster
    on CPUs than ``torch.where``."""
    return grad * mask.view(torch.uint8)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A boolean ``mask`` as one bit per element, eight elements per byte in flat order: an
    eighth of the memory, for masks kept from the forward to the backward pass."""
    flat = mask.reshape(-1).view(torch.uint8)
    if flat.numel() % 8:
        flat = torch.cat((flat, flat.new_zeros(-flat.numel() % 8)))
    planes = flat.view(-1, 8)
    packed = planes[:, 0].clone()
    for bit in range(1, 8):
        packed.bitwise_or_(planes[:, bit] << bit)
    return packed


def unpack_mask(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The mask of :func:`pack_mask` of ``shape`` as 0 / 1 bytes (what :func:`masked` takes)."""
    bits = packed.new_tensor([1 << bit for bit in range(8)])
    return (packed.unsqueeze(1) & bits).ne_(0).view(-1)[:shape.numel()].view(shape)


class SignClippedSTE(torch.autograd.Function):
    """``sign(x)`` forward; backward passes the gradient where ``|x| < 1`` (XNOR-Net, BNN).

    Only a 1-bit mask is kept for the backward pass, not a copy of the input, and none when no
    gradient is needed (evaluation, or a fused operation that recomputes it).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x.abs() < 1)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (mask,) = ctx.saved_tensors
        return masked(grad, mask)


def bireal_slope_(x: torch.Tensor) -> torch.Tensor:
    """Bi-Real's sign derivative ``max(0, 2 - 2|x|)`` (Liu et al., ECCV 2018, Eq. 5), computed
    in place in ``x``."""
    return x.abs_().mul_(-2.0).add_(2.0).clamp_(min=0.0)


class SurrogateSign(torch.autograd.Function):
    """``sign(x)`` forward, keeping ``x`` for the backward pass a subclass defines: the incoming
    gradient times a surrogate of the sign's derivative at ``x``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.sign(x)


class SignBiRealSTE(SurrogateSign):
    """``sign(x)`` forward; Bi-Real's piecewise-polynomial backward ``max(0, 2 - 2|x|)``
    (Liu et al., ECCV 2018, Eq. 5), used by ReCU's activations in evaluation mode."""

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return bireal_slope_(x.clone()).mul_(grad)


sign_clipped_ste = SignClippedSTE.apply
sign_bireal_ste = SignBiRealSTE.apply


def straight_through(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` forward, identity gradient into ``x`` (``x - x.detach() + value``).

    The forward result is exactly ``value`` (``x - x.detach()`` is an exact zero), unlike
    ``x + (value - x).detach()``, which can be off by one rounding step.
    """
    return x - x.detach() + value
