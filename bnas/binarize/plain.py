"""Plain sign binarization as used by BNAS (Kim et al., ECCV 2020), XNOR-Net style.

Weights (Rastegari et al., ECCV 2016, Sec. 3.1, with the gradient of BNAS's reference code):
before a forward pass with changed latent weights, project them in place: mean-centre over the
input-channel axis and clamp to [-1, 1]. The convolution's weight is ``sign(W) * alpha`` with
``alpha = mean|W|`` per out-channel (``n = I*kh*kw`` entries), computed as
``conv(x, sign(W)) * alpha`` (exact integer sums, one rounding; see
:class:`~bnas.binarize.base.BinaryConv2d`). The latent weight's gradient is
``(alpha * 1{|W| <= 1} * g + sign(W) * mean_n(sign(W) * g)) * (1 - 1/I) * n``, ``g`` the
gradient with respect to ``sign(W) * alpha``. With the scale applied to the output, the
gradient reaching ``sign(W)`` is ``g_s = alpha * g`` and the one reaching ``alpha`` is
``g_alpha = sum_n(sign(W) * g)``, so the two terms are :class:`XnorSign`'s
``1{|W| <= 1} * g_s * k`` and :class:`XnorScale`'s ``sign(W) * g_alpha / n * k``
(``k = (1 - 1/I) * n``), whose sum autograd forms.
Activations: ``sign(x)`` with a straight-through gradient where ``|x| < 1``; no scale.

Gradient-norm clipping (BNAS's ImageNet recipe) measures, as BNAS's training script does, the
gradient ``g`` with respect to the binary weights, before the rescaling above; since the
rescaling is linear, clipping ``g`` and then rescaling equals rescaling and then scaling by the
same factor (:meth:`Plain.measured_gradients` recovers ``g`` exactly from the latent gradient,
:func:`binary_weight_gradient`).
"""
from __future__ import annotations

import torch

from .base import Binarizer, SignInputConv2d
from .registry import register
from .ste import SurrogateSign


def rescaling(w: torch.Tensor) -> float:
    """BNAS's gradient factor ``(1 - 1/I) * n`` for a weight ``(O, I, kh, kw)``, ``n = I*kh*kw``."""
    return (1.0 - 1.0 / w.shape[1]) * w[0].numel()


class XnorSign(SurrogateSign):
    """``sign(W)``; backward ``1{|W| <= 1} * g_s * (1 - 1/I) * n`` (``g_s`` the gradient with
    respect to the sign): the direct term of BNAS's rescaled straight-through gradient."""

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        (w,) = ctx.saved_tensors
        return (w.abs() <= 1) * g * rescaling(w)


class XnorScale(torch.autograd.Function):
    """``alpha = mean|W|`` per out-channel, ``(O,)``; backward
    ``sign(W) * g_alpha / n * (1 - 1/I) * n``: the term through ``alpha`` of BNAS's gradient."""

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w)
        return w.abs().mean(dim=(1, 2, 3))

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        (w,) = ctx.saved_tensors
        return torch.sign(w) * (g / w[0].numel() * rescaling(w)).view(-1, 1, 1, 1)


def binary_weight_gradient(w: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Invert BNAS's gradient (:class:`XnorSign` plus :class:`XnorScale`): the gradient ``g``
    with respect to ``sign(W) * alpha`` from the latent weight's gradient ``grad``, for
    projected weights (``|W| <= 1``).

    With ``k = (1 - 1/I) * n``, ``s = sign(W)`` and ``mu = mean_n(s * g)`` per out-channel:
    where ``s = 0``, ``grad = k * alpha * g``; elsewhere ``s * grad / k = alpha * s * g + mu``,
    whose sum over those entries is ``(alpha * n + n_s) * mu`` (``n_s`` of them), giving ``mu``
    and then ``g``. Channels with ``alpha = 0`` or ``I = 1`` (where the rescaling is zero) give 0.
    """
    dims = (1, 2, 3)
    n, k = w[0].numel(), rescaling(w)
    if k == 0.0:
        return torch.zeros_like(grad)
    alpha = w.abs().mean(dim=dims, keepdim=True)
    s = torch.sign(w)
    nonzero = s != 0
    u = s * grad / k
    mu = u.sum(dim=dims, keepdim=True) / (alpha * n + nonzero.sum(dim=dims, keepdim=True))
    safe = torch.where(alpha > 0, alpha, torch.ones_like(alpha))
    g = torch.where(nonzero, s * (u - mu), grad / k) / safe
    return torch.where(alpha > 0, g, torch.zeros_like(g))


class PlainConv2d(SignInputConv2d):
    """BNAS's binary convolution: sign activations, XNOR-scaled sign weights."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._projected_version = -1

    @torch.no_grad()
    def project_(self) -> None:
        """Mean-centre the latent weight over input channels and clamp it to [-1, 1] in place."""
        w = self.weight
        w.copy_((w - w.mean(dim=1, keepdim=True)).clamp_(-1.0, 1.0))
        self._projected_version = w._version

    def projected_weight(self) -> torch.Tensor:
        """The latent weight, projected if it changed since the last projection: the reference
        projects once per optimisation step (and before evaluation); the weight's version
        counter tells whether the optimizer (or a load) changed it since."""
        if self.weight._version != self._projected_version:
            self.project_()
        return self.weight

    def binary_weight(self) -> torch.Tensor:
        return XnorSign.apply(self.projected_weight())

    def weight_scale(self) -> torch.Tensor:
        return XnorScale.apply(self.projected_weight())


@register("plain", aliases=("bnas", "xnor", "sign"))
class Plain(Binarizer):
    """BNAS / XNOR-Net sign binarization (the search's default scheme)."""

    name = "plain"
    paper = "Kim, Singh, Choi. Learning Architectures for Binary Networks. ECCV 2020"
    conv_class = PlainConv2d
    # BNAS's recipes (Sec. 4.1 and its public training scripts): bnas/recipes/bnas-*.yaml.
    recipes = {"cifar": "bnas-cifar", "imagenet": "bnas-imagenet"}

    def measured_gradients(self, model: torch.nn.Module) -> list[torch.Tensor]:
        """What BNAS clips: each binary convolution's gradient with respect to its binary weight
        (:func:`binary_weight_gradient`), every other parameter's own."""
        binary = {id(layer.weight) for layer in self.binary_convs(model)}
        return [binary_weight_gradient(p.detach(), p.grad) if id(p) in binary else p.grad
                for p in model.parameters() if p.grad is not None]

    def set_epoch(self, model: torch.nn.Module, epoch: int, epochs: int) -> None:
        # The reference projects at every binarization, so the first step after a validation
        # projects the (already projected) weights again; doing it here keeps that, and a run
        # resumed from a checkpoint takes exactly the same step as an uninterrupted one.
        for layer in self.binary_convs(model):
            layer.project_()
