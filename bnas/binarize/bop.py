"""Bop and Bop2ndOrder as schemes: latent-free binary weights that an optimizer flips.

Helwegen et al., "Latent Weights Do Not Exist: Rethinking Binarized Neural Network
Optimization", NeurIPS 2019; Bop2ndOrder from Suarez-Ramirez et al., "A Bop and Beyond: A Second
Order Optimizer for Binarized Neural Networks", CVPR Workshops 2021. See
:mod:`bnas.binarize.optim` for the update rules.

The convolution's weight *is* the binary weight: :class:`BopConv2d` uses ``s(W)`` (+1 for
``W >= 0``, else -1), which equals ``W`` once Bop has stepped and binarises a freshly initialised
real-valued weight, so the forward pass is binary from the start. Its gradient reaches ``W``
unchanged (Bop's ``g`` is the gradient with respect to the binary weight); there is no scale.
Input activations: ``sign`` with the straight-through gradient clipped to ``|x| < 1``.

The scheme's :meth:`~BopScheme.optimizer` is a :class:`~bnas.binarize.optim.CaseOptimizer`:
binary weights go to Bop (never with weight decay, which would flip them), every other trainable
parameter (stem, classifier, BatchNorm) to the ordinary optimizer, Adam in the papers.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import BnasError
from .base import Binarizer, OptimizerSettings, RunSpec, SignInputConv2d
from .hparams import invalid, log_range
from .optim import Bop, Bop2ndOrder, CaseOptimizer, binary_sign, is_binary_weight
from .registry import register
from .schedules import from_spec


class BopConv2d(SignInputConv2d):
    """A binary convolution without latent weights: ``conv(sign(x), s(W))``."""

    def binary_weight(self) -> torch.Tensor:
        w = self.weight
        return binary_sign(w.detach()) + (w - w.detach())  # value s(W), gradient to W as is


@register("bop")
class BopScheme(Binarizer):
    """Bop (Helwegen et al., NeurIPS 2019): binary weights flipped by :class:`Bop`.

    Hyper-parameters ``threshold`` and ``gamma``: numbers, or epoch-based schedules such as
    ``{"schedule": "step", "start": 1e-4, "factor": 0.1, "every": 100}`` (see
    :mod:`bnas.binarize.schedules`).
    """

    name = "bop"
    paper = ("Helwegen, Widdicombe, Geiger, Liu, Cheng, Nusselder. Latent Weights Do Not Exist: "
             "Rethinking Binarized Neural Network Optimization. NeurIPS 2019")
    conv_class = BopConv2d
    optimizer_class: ClassVar[type[Bop] | type[Bop2ndOrder]] = Bop
    schedulable: ClassVar[tuple[str, ...]] = ("threshold", "gamma")
    hparams = {"threshold": 1e-8, "gamma": 1e-4}
    # gamma 1e-4, threshold 1e-8 in the paper; Adam lr 0.01 for the real-valued parameters
    tune_space = {"lr": log_range(1e-4, 1e-1), "gamma": log_range(1e-6, 1e-2),
                  "threshold": log_range(1e-9, 1e-5)}
    # Sec. 5.2 (CIFAR-10) and Sec. 5.3 (ImageNet): bnas/recipes/bop-*.yaml.
    recipes = {"cifar": "bop-cifar", "imagenet": "bop-imagenet"}

    def validate(self) -> None:
        # Build the optimizer once on a stand-in weight: its own checks judge the values.
        self.binary_optimizer([nn.Parameter(torch.zeros(1))], epochs=1, steps_per_epoch=1)

    def binary_optimizer(self, params: list[nn.Parameter], epochs: int | None = None,
                         steps_per_epoch: int | None = None) -> Bop | Bop2ndOrder:
        """The Bop optimizer over ``params``, epoch-based schedules turned into step-based."""
        kwargs = dict(self.config_values)
        for key in self.schedulable:
            try:
                kwargs[key] = from_spec(kwargs[key], steps_per_epoch, epochs)
            except BnasError as error:
                raise invalid(self.name, f"{key}: {error}") from None
        try:
            return self.optimizer_class(params, **kwargs)
        except BnasError as error:
            raise invalid(self.name, str(error)) from None

    def param_groups(self, model: nn.Module, weight_decay: float,
                     family: str = "cifar") -> list[dict[str, Any]]:
        """The ordinary optimizer's groups: every trainable parameter but the binary weights."""
        binary = {id(p) for module in model.modules()
                  for name, p in module.named_parameters(recurse=False)
                  if is_binary_weight(module, name, p)}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in binary]
        return [{"params": rest, "weight_decay": weight_decay}]

    def optimizer(self, model: nn.Module, settings: OptimizerSettings,
                  run: RunSpec | None = None) -> CaseOptimizer:
        """Bop for the binary weights, the ``settings.name`` optimizer (over
        :meth:`param_groups`) for the rest. A hyper-parameter given as a schedule needs ``run``
        (its epochs and steps per epoch)."""
        epochs, steps = (run.epochs, run.steps_per_epoch) if run is not None else (None, None)
        return CaseOptimizer(
            model, (is_binary_weight, lambda ps: self.binary_optimizer(ps, epochs, steps)),
            # the ordinary optimizer builds over param_groups(), i.e. the routed "rest"
            default=lambda ps: Binarizer.optimizer(self, model, settings, run))


@register("bop2", aliases=("bop2ndorder",))
class Bop2Scheme(BopScheme):
    """Bop2ndOrder (Suarez-Ramirez et al., CVPR Workshops 2021): flips on the gradient average
    normalised by its second moment. ``bias_correction=True`` is the paper's unbiased variant."""

    name = "bop2"
    paper = ("Suarez-Ramirez, Gonzalez-Mendoza, Chang, Ochoa-Ruiz, Duran-Vega. A Bop and Beyond: "
             "A Second Order Optimizer for Binarized Neural Networks. CVPR Workshops 2021")
    optimizer_class = Bop2ndOrder
    schedulable = ("threshold", "gamma", "sigma")
    hparams = {"threshold": 1e-6, "gamma": 1e-6, "sigma": 1e-2, "bias_correction": False}
    # CIFAR-10 anneals gamma 1e-2 -> 1e-5, threshold 1e-5 -> 1e-8, sigma 1e-7 -> 1e-2; tuned
    # here as constants
    tune_space = {"lr": log_range(1e-4, 1e-1), "gamma": log_range(1e-7, 1e-2),
                  "threshold": log_range(1e-9, 1e-4), "sigma": log_range(1e-5, 1e-1)}
    # The paper's CIFAR-10 settings and the authors' ImageNet ones: bnas/recipes/bop2-*.yaml.
    recipes = {"cifar": "bop2-cifar", "imagenet": "bop2-imagenet"}
