"""RBNN: Rotated Binary Neural Network (Lin et al., NeurIPS 2020, arXiv:2009.13055).

Weights (Sec. 3.1-3.3). Per out-channel the latent weight is standardised,
``w2 = (W - mean) / std`` (unbiased std), viewed as ``X`` of shape ``(O, a, b)`` with
``a * b = N = I*kh*kw`` (``a`` the largest divisor of ``N`` not above ``sqrt(N)``) and rotated by
two orthogonal matrices shared by the layer's out-channels, ``R1^T X R2`` (Eq. 4). The rotation
is blended in by a learnable angle per out-channel (the adjustable rotated weight vector,
Eq. 12): ``w3 = w2 + |sin(theta)| * ((R1^T X R2).detach() - w2)``, ``theta`` initialised to
``pi/2``. The convolution uses ``sign(w3)`` and multiplies its output by a learnable
per-out-channel ``alpha`` initialised to ``mean|W|`` (``conv(sign(a), sign(w3)) * alpha``,
exact integer sums then one rounding; :class:`~bnas.binarize.base.BinaryConv2d`). At ``theta = pi/2`` the latent weight's gradient is exactly
zero (only ``theta`` and ``alpha`` learn until ``theta`` moves).

Sign gradient (training-aware approximation, Eq. 15):
``d sign(x)/dx ~ k * max(0, sqrt(2)*t - t^2*|x|)`` with
``t = 10^(log10(Tmin) + (log10(Tmax) - log10(Tmin)) * e / E)`` and ``k = max(1/t, 1)`` at
epoch ``e`` of ``E``. Activations are standardised per sample over ``(C, H, W)`` (unbiased std),
then ``sign`` with the same curve at ``k = 1`` and ``t' = max(t, 1)``; ``a32=True`` keeps the
standardised activations real (a w1a32 network).

Rotation update (Sec. 3.2, Eqs. 7-10): on the first training batch of every
``rotation_update``-th epoch, three alternating steps on the detached standardised weight:
``B = sign(R1^T X R2)``; ``D1 = sum_i B_i R2^T X_i^T = U S V^T``, ``R1 = V U^T``;
``D2 = sum_i X_i^T R1 B_i = U S V^T``, ``R2 = U V^T``. The buffers are overwritten in place
(the authors' code rebinds them inside ``forward``, which data-parallel replicas silently drop).

Data-parallel training: the update reads only the weights, never the batch, so every process
starts it from the same (all-reduced, identically stepped) weights and computes the same
rotation; nothing needs to be communicated.
"""
from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from .base import Binarizer, BinaryConv2d
from .hparams import SGD_SPACE, flag, invalid, log_range, number, positive_int
from .normalize import standardize, standardized_sign
from .registry import register


def rotation_shape(n: int) -> tuple[int, int]:
    """``(a, b)``: ``a * b = n``, ``a`` the largest divisor of ``n`` with ``a <= sqrt(n)``."""
    a = next(d for d in range(math.isqrt(n), 0, -1) if n % d == 0)
    return a, n // a


def random_orthogonal(n: int) -> torch.Tensor:
    """A Haar-random ``n x n`` orthogonal matrix (QR of a Gaussian matrix with the signs of
    ``R``'s diagonal moved into ``Q``; Mezzadri 2007), drawn from torch's generator so that
    ``torch.manual_seed`` makes it reproducible."""
    q, r = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    d = torch.sign(torch.diagonal(r))
    d[d == 0] = 1.0
    return (q * d).float()


def temperature(epoch: int, epochs: int, t_min: float, t_max: float) -> float:
    """``t`` of Eq. 15: log-linear from ``t_min`` at epoch 0 to ``t_max`` at epoch ``epochs``."""
    lo, hi = math.log10(t_min), math.log10(t_max)
    return 10.0 ** (lo + (hi - lo) * epoch / epochs)


def rbnn_slope_(x: torch.Tensor, k: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``k * max(0, sqrt(2)*t - t^2*|x|)`` (RBNN Eq. 15), computed in place in ``x``."""
    return x.mul_(t * t).abs_().neg_().add_(math.sqrt(2.0) * t).mul_(k).clamp_(min=0.0)


class SignRBNN(torch.autograd.Function):
    """``sign(x)`` forward; backward ``k * max(0, sqrt(2)*t - t^2*|x|)`` (RBNN Eq. 15)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, k, t)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, k, t = ctx.saved_tensors
        return rbnn_slope_(x.clone(), k, t).mul_(grad), None, None


class RBNNConv2d(BinaryConv2d):
    """RBNN's binary convolution: rotated, angle-blended sign weights times ``alpha``.

    Buffers ``R1`` (``a x a``), ``R2`` (``b x b``), ``t`` and ``k``; parameters ``theta``
    ``(O, 1, 1, 1)`` and ``alpha`` ``(O, 1, 1)``. With ``input_precision = 32`` the
    standardised activations are used as they are (RBNN's ``--a32``).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        out_channels = self.weight.shape[0]
        self.rows, self.cols = rotation_shape(self.weight[0].numel())
        self.register_buffer("R1", random_orthogonal(self.rows))
        self.register_buffer("R2", random_orthogonal(self.cols))
        self.register_buffer("t", torch.tensor(1.0))
        self.register_buffer("k", torch.tensor(1.0))
        self.theta = nn.Parameter(torch.full((out_channels, 1, 1, 1), math.pi / 2))
        self.alpha = nn.Parameter(
            self.weight.detach().abs().mean(dim=(1, 2, 3)).view(out_channels, 1, 1))

    def standardized_weight(self) -> torch.Tensor:
        """``w2 = (W - mean) / std`` per out-channel (unbiased std)."""
        return standardize(self.weight)

    def rotate(self, w2: torch.Tensor) -> torch.Tensor:
        """``R1^T X R2`` with ``X = w2`` viewed as ``(O, a, b)``, back in the weight's shape."""
        x = w2.reshape(w2.shape[0], self.rows, self.cols)
        return (self.R1.t() @ x @ self.R2).view_as(w2)

    @torch.no_grad()
    def update_rotation_(self, steps: int = 3) -> None:
        """Alternate the bi-rotation updates (Eqs. 7-10) ``steps`` times, in place."""
        x = self.standardized_weight().reshape(-1, self.rows, self.cols)
        r1, r2 = self.R1, self.R2
        for _ in range(steps):
            b = torch.sign(r1.t() @ x @ r2)
            u, _, vh = torch.linalg.svd((b @ r2.t() @ x.transpose(1, 2)).sum(dim=0))
            r1 = vh.mH @ u.mH
            u, _, vh = torch.linalg.svd((x.transpose(1, 2) @ r1 @ b).sum(dim=0))
            r2 = u @ vh
        self.R1.copy_(r1)
        self.R2.copy_(r2)

    def binarize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_precision == 32:
            return standardize(x)
        return standardized_sign(x, partial(rbnn_slope_, k=torch.ones_like(self.k),
                                            t=self.t.clamp(min=1.0)))

    def binary_weight(self) -> torch.Tensor:
        w2 = self.standardized_weight()
        with torch.no_grad():  # the rotation is a constant of the step
            rotated = self.rotate(w2)
        w3 = w2 + torch.sin(self.theta).abs() * (rotated - w2)
        return SignRBNN.apply(w3, self.k, self.t)

    def weight_scale(self) -> torch.Tensor:
        return self.alpha.view(-1)


@register("rbnn", aliases=("RBNN",))
class RBNN(Binarizer):
    """Rotated binary networks: learnable weight rotation with a training-aware sign gradient.

    Hyper-parameters: ``Tmin``, ``Tmax`` (the gradient curve's ``t`` range, ``0 < Tmin <= Tmax``),
    ``rotation_update`` (update the rotation every this many epochs) and ``a32`` (keep
    activations real).
    """

    name = "rbnn"
    paper = ("Lin, Ji, Xu, Wu, Zhang, Huang, Lin, Ling, Ji, Lin. Rotated Binary Neural Network. "
             "NeurIPS 2020")
    conv_class = RBNNConv2d
    hparams = {"Tmin": 1e-2, "Tmax": 1e1, "rotation_update": 1, "a32": False}
    # t = 10^(log Tmin + (log Tmax - log Tmin) e/E), Tmin 1e-2, Tmax 1e1 in the paper.
    tune_space = {**SGD_SPACE, "Tmin": log_range(1e-3, 1e-1), "Tmax": log_range(1.0, 100.0)}
    epoch_schedule = True
    recipes = {"cifar": "rbnn-cifar", "imagenet": "rbnn-imagenet"}

    def validate(self) -> None:
        t_min = number(self.name, "Tmin", self.Tmin)
        t_max = number(self.name, "Tmax", self.Tmax)
        if t_min <= 0 or t_max <= 0:
            raise invalid(self.name, f"Tmin and Tmax must be positive, got {t_min:g} and {t_max:g}")
        if t_min > t_max:
            raise invalid(self.name, f"Tmin ({t_min:g}) must not exceed Tmax ({t_max:g})")
        positive_int(self.name, "rotation_update", self.rotation_update)
        flag(self.name, "a32", self.a32)

    def init_layer(self, layer: RBNNConv2d) -> None:
        layer.input_precision = 32 if self.a32 else 1
        super().init_layer(layer)

    def set_epoch(self, model: nn.Module, epoch: int, epochs: int) -> None:
        t = temperature(epoch, epochs, self.Tmin, self.Tmax)
        for layer in self.binary_convs(model):
            layer.t.fill_(t)
            layer.k.fill_(max(1.0 / t, 1.0))

    def before_batch(self, model: nn.Module, epoch: int, batch: int) -> None:
        if batch == 0 and epoch % self.rotation_update == 0:
            for layer in self.binary_convs(model):
                layer.update_rotation_()
