"""SiMaN: Sign-to-Magnitude Network Binarization (Lin et al., TPAMI 2022, arXiv:2102.07981).

Weights, on every forward pass (training and evaluation):

1. The latent weight is projected in place: ``w1 = W - mean`` per out-channel (detached); with
   ``p = percent * (1 - e/E)`` (``percent`` = 15 by default), ``|w1|`` is clipped to its
   ``[p, 100 - p]`` percentiles over the whole layer (linear interpolation, as
   ``numpy.percentile``) and ``W <- sign(w1) * clipped |w1|``.
2. ``w2 = (W - mean) / sqrt(var + 1e-5)`` per out-channel, ``X = |w2|`` per out-channel row of
   ``N = I*kh*kw`` entries.
3. The binary code maximises the correlation with ``X`` under the constraint of half ones
   (Sec. 3.2): ``B`` is 1 for the ``floor(N/2)`` largest entries of each row and 0 elsewhere,
   recomputed in training mode and stored in the ``B`` buffer for evaluation.
4. ``bw = X - X.detach() + (2B - 1)``: +1 for large magnitudes, -1 for small whatever the
   sign, with an identity gradient into ``|w2|``. The output is multiplied by a learnable
   per-out-channel ``alpha`` initialised to ``mean|W|``: ``conv(ba, bw) * alpha``, exact integer
   sums then one rounding (:class:`~bnas.binarize.base.BinaryConv2d`).

Activations: ``(a - mean) / sqrt(var + 1e-5)`` per sample over ``(C, H, W)``, ``sign`` with
Bi-Real's backward ``max(0, 2 - 2|x|)``.

Optimisation: the binary convolutions' parameters get no weight decay; every other parameter
gets the configured decay.

Deviation: the authors initialise ``B`` from ``(sign(W) + 1) / 2``; here it starts as the
magnitude mask of the initial weight, so that a layer evaluated before any training step uses
the same rule as a trained one. Data-parallel training: the projection and the mask read only
the weights, which are identical on every process, so they agree without communication.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .base import Binarizer, BinaryConv2d
from .hparams import SGD_SPACE, invalid, linear_range, number
from .normalize import standardize, standardized_sign
from .registry import register
from .ste import bireal_slope_, straight_through


def percentile(values: torch.Tensor, q: float | torch.Tensor) -> torch.Tensor:
    """The ``q``-th percentile (0-100) of ``values`` (any shape, any order), with
    ``numpy.percentile``'s default linear interpolation between the order statistics at
    ``floor(pos)`` and ``floor(pos) + 1``, ``pos = q/100 * (n - 1)``. The two order statistics
    come from selection (:func:`torch.kthvalue`), several times cheaper than a full sort."""
    flat = values.reshape(-1)
    last = flat.numel() - 1
    pos = min(max(float(q) / 100.0 * last, 0.0), float(last))
    lo = math.floor(pos)
    low = flat.kthvalue(lo + 1).values
    if pos == lo:
        return low
    return low + (flat.kthvalue(lo + 2).values - low) * (pos - lo)


def half_mask(x: torch.Tensor) -> torch.Tensor:
    """1 at the ``floor(N/2)`` largest entries of each row of ``x`` ``(O, N)``, 0 elsewhere.

    The entries at or above each row's ``floor(N/2)``-th largest value (found by selection) are
    those entries unless that value is tied; only then is the choice among the ties left to
    :func:`torch.topk`."""
    half = x.shape[1] // 2
    if half > 0:
        threshold = x.kthvalue(x.shape[1] - half + 1, dim=1, keepdim=True).values
        mask = x >= threshold
        if bool((mask.sum(dim=1) == half).all()):
            return mask.to(x.dtype)
    top = torch.topk(x, half, dim=1).indices
    return torch.zeros_like(x).scatter_(1, top, 1.0)


class SiMaNConv2d(BinaryConv2d):
    """SiMaN's binary convolution: +-1 weights by magnitude rank, times ``alpha``.

    Buffers ``percent`` (the current clip percentile) and ``B`` (the mask, weight-shaped);
    parameter ``alpha`` ``(O, 1, 1)``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        w = self.weight.detach()
        self.register_buffer("percent", torch.tensor(0.0))
        self.register_buffer("B", self.magnitude_mask(standardize(w, eps=1e-5)))
        self.alpha = nn.Parameter(w.abs().mean(dim=(1, 2, 3)).view(w.shape[0], 1, 1))

    @staticmethod
    def magnitude_mask(w2: torch.Tensor) -> torch.Tensor:
        """``B`` for a standardised weight, in the weight's shape."""
        return half_mask(w2.detach().abs().flatten(1)).view_as(w2)

    @torch.no_grad()
    def project_(self) -> None:
        """Clip the centred latent weight's magnitudes to their ``[p, 100-p]`` percentiles, in
        place."""
        w1 = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        magnitude = w1.abs()
        percent = float(self.percent)
        low = percentile(magnitude, percent)
        high = percentile(magnitude, 100.0 - percent)
        self.weight.copy_(magnitude.clamp_(min=low, max=high).mul_(torch.sign(w1)))

    def binarize_input(self, x: torch.Tensor) -> torch.Tensor:
        return standardized_sign(x, bireal_slope_, eps=1e-5)

    def binary_weight(self) -> torch.Tensor:
        self.project_()
        x = standardize(self.weight, eps=1e-5).abs()
        if self.training:
            self.B.copy_(self.magnitude_mask(x))
        return straight_through(x, 2.0 * self.B - 1.0)

    def weight_scale(self) -> torch.Tensor:
        return self.alpha.view(-1)


@register("siman", aliases=("SiMaN",))
class SiMaN(Binarizer):
    """Sign-to-magnitude binarization: weights are +1 for the larger half of magnitudes and -1
    for the smaller half. Hyper-parameter ``percent`` (the epoch-0 clip percentile, in
    ``[0, 50)``), decayed linearly to 0 over training."""

    name = "siman"
    paper = ("Lin, Ji, Xu, Zhang, Wang, Wu, Ling, Ji, Lin. SiMaN: Sign-to-Magnitude Network "
             "Binarization. TPAMI 2022")
    conv_class = SiMaNConv2d
    hparams = {"percent": 15.0}
    # the clip percentile is 15 at epoch 0 in the paper, decayed to 0
    tune_space = {**SGD_SPACE, "percent": linear_range(5.0, 25.0)}
    epoch_schedule = True
    recipes = {"cifar": "siman-cifar", "imagenet": "siman-imagenet"}
    networks = {"resnet20_1w1a": "siman_resnet20_1w1a", "vgg_small_1w1a": "siman_vgg_small_1w1a",
                "resnet18_1w1a": "siman_resnet18_1w1a", "resnet34_1w1a": "siman_resnet34_1w1a"}

    def validate(self) -> None:
        percent = number(self.name, "percent", self.percent)
        if not 0.0 <= percent < 50.0:
            raise invalid(self.name, f"percent must lie in [0, 50), got {percent:g}")

    def set_epoch(self, model: nn.Module, epoch: int, epochs: int) -> None:
        percent = self.percent * (1.0 - epoch / epochs)
        for layer in self.binary_convs(model):
            layer.percent.fill_(percent)

    def param_groups(self, model: nn.Module, weight_decay: float,
                     family: str = "cifar") -> list[dict[str, Any]]:
        """Binary-convolution parameters without weight decay, the rest with ``weight_decay``."""
        binary = {id(p) for layer in self.binary_convs(model) for p in layer.parameters()}
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if id(p) not in binary],
                   "weight_decay": weight_decay},
                  {"params": [p for p in params if id(p) in binary], "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]
