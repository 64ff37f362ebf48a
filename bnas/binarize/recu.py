"""ReCU: Reviving the Dead Weights in Binary Neural Networks (Xu et al., ICCV 2021,
arXiv:2103.12369).

Weights. Per out-channel, ``w1 = (W - mean) / (sqrt(var + 1e-5) / (2*sqrt(2)))`` (the
standardisation that maximises the weights' information entropy, Sec. 3.4), then the
rectified clamp unit (Eq. 6) with ``Q = -mean(|w1|) * ln(2 - 2*tau)`` (the tau-quantile of a
Laplace distribution of scale ``mean|w1|``, taken over the whole layer; no gradient through
``Q``): ``bw = sign(clamp(w1, -Q, Q))`` with an identity straight-through gradient, so only the
clamp zeroes the gradient of weights outside ``[-Q, Q]``. The output is multiplied by a
learnable per-out-channel ``alpha`` initialised uniformly in ``[0, 1)``: ``conv(ba, bw) * alpha``,
exact integer sums then one rounding (:class:`~bnas.binarize.base.BinaryConv2d`).

``tau`` grows exponentially over training (Sec. 4.1): ``tau(e) = A*exp(e/E) + B`` with
``A = (tau_max - tau_min) / (exp(1) - 1)`` and ``B = tau_min - A``, i.e. ``tau_min`` at epoch 0
rising to ``tau_max`` at epoch ``E``.

Activations. In training mode ``a / sqrt(var + 1e-5)`` per sample over ``(C, H, W)`` (no mean
subtraction), in evaluation mode the raw input; ``sign`` forward with Bi-Real's backward
``max(0, 2 - 2|x|)``. (The scaling does not change the sign, only the gradient.)

Optimisation: on ImageNet only convolution / linear weights and biases and ``alpha`` are
weight-decayed; BatchNorm and the residual downsample branches are not (on CIFAR every
parameter is).
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from .base import Binarizer, BinaryConv2d, FusedInput, in_downsample_branches
from .hparams import SGD_SPACE, invalid, linear_range, number
from .normalize import standardize, standardized_sign
from .registry import register
from .ste import bireal_slope_, sign_bireal_ste, straight_through



def tau_schedule(epoch: int, epochs: int, tau_min: float, tau_max: float) -> float:
    """``A * exp(epoch / epochs) + B``, ``A = (tau_max - tau_min)/(e - 1)``, ``B = tau_min - A``."""
    a = (tau_max - tau_min) / (math.e - 1.0)
    return a * math.exp(epoch / epochs) + tau_min - a


class ReCUConv2d(BinaryConv2d):
    """ReCU's binary convolution: sign of the clamped standardised weight, times ``alpha``.

    Buffer ``tau`` (the clamp quantile); parameter ``alpha`` ``(O, 1, 1)``.
    """

    fused_input = FusedInput.SCALED_BIREAL
    #: ``eps`` of the activations' per-sample scaling ``a / sqrt(var + eps)``.
    activation_eps: ClassVar[float] = 1e-5

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("tau", torch.tensor(1.0))
        self.alpha = nn.Parameter(torch.rand(self.weight.shape[0], 1, 1))

    def binarize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return standardized_sign(x, bireal_slope_, eps=self.activation_eps, center=False)
        return sign_bireal_ste(x)

    def binary_weight(self) -> torch.Tensor:
        w1 = standardize(self.weight, eps=1e-5) * (2.0 * math.sqrt(2.0))
        q = (-w1.abs().mean() * torch.log(2.0 - 2.0 * self.tau)).detach()
        w2 = torch.clamp(w1, -q, q)
        return straight_through(w2, torch.sign(w2))

    def weight_scale(self) -> torch.Tensor:
        return self.alpha.view(-1)


@register("recu", aliases=("ReCU",))
class ReCU(Binarizer):
    """Rectified clamp unit: revives "dead" (large-magnitude) weights by clamping them at a
    growing quantile ``Q(tau)``. Hyper-parameters ``tau_min``, ``tau_max`` with
    ``0 < tau_min <= tau_max < 1``."""

    name = "recu"
    paper = ("Xu, Lin, Zhang, Wang, Zhong, Wu, Ji, Lin. ReCU: Reviving the Dead Weights in "
             "Binary Neural Networks. ICCV 2021")
    conv_class = ReCUConv2d
    hparams = {"tau_min": 0.85, "tau_max": 0.99}
    # tau rises from 0.85 to 0.99 in the paper; it must stay in (0.5, 1).
    tune_space = {**SGD_SPACE, "tau_min": linear_range(0.6, 0.9),
                  "tau_max": linear_range(0.92, 0.999)}
    epoch_schedule = True
    recipes = {"cifar": "recu-cifar", "imagenet": "recu-imagenet"}
    networks = {"resnet20_1w1a": "recu_resnet20_1w1a", "resnet18_1w1a": "recu_resnet18_1w1a"}

    def validate(self) -> None:
        lo = number(self.name, "tau_min", self.tau_min)
        hi = number(self.name, "tau_max", self.tau_max)
        for key, value in (("tau_min", lo), ("tau_max", hi)):
            if not 0.0 < value < 1.0:
                raise invalid(self.name, f"{key} must lie strictly between 0 and 1, got {value:g}")
        if lo > hi:
            raise invalid(self.name, f"tau_min ({lo:g}) must not exceed tau_max ({hi:g})")

    def set_epoch(self, model: nn.Module, epoch: int, epochs: int) -> None:
        tau = tau_schedule(epoch, epochs, self.tau_min, self.tau_max)
        for layer in self.binary_convs(model):
            layer.tau.fill_(tau)

    def param_groups(self, model: nn.Module, weight_decay: float,
                     family: str = "cifar") -> list[dict[str, Any]]:
        """CIFAR: every parameter decays. ImageNet: only the weights and biases of convolutions
        and linear layers, and ``alpha``, outside residual downsample branches (the modules the
        builders mark, :func:`~bnas.binarize.base.downsample_branch`)."""
        if family != "imagenet":
            return super().param_groups(model, weight_decay, family)
        decay: list[nn.Parameter] = []
        rest: list[nn.Parameter] = []
        seen: set[int] = set()
        exempt = in_downsample_branches(model)
        for module in model.modules():
            decays = isinstance(module, (nn.Conv2d, nn.Linear)) and id(module) not in exempt
            for p in module.parameters(recurse=False):
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    (decay if decays else rest).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": rest, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]
