"""Per-layer overrides: layers of a built network that compute differently from what its
scheme builds, by name.

The one override kind, ``real_weight``, exists for weights trained by BNAS's reference code
(Kim et al., ECCV 2020): its binarization helper numbered the convolutions it binarizes among
all convolutions but counted only the non-residual ones, so the last ``k`` convolutions in
module order (``k`` = the number of cell-residual convolutions) kept real weights while their
input was still sign-binarized. bnas does not build networks that way; a weights file imported
from BNAS lists those layers (``layer_overrides``) and the builder applies them, so the weights
evaluate as they were trained. The file and the run's configuration carry the overrides, and a
model built without them refuses the file.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
from torch import nn

from ..binarize.base import BinaryConv2d, SignInputConv2d
from ..errors import BnasError
from ..registry import Registry

OVERRIDES: Registry[Callable[[BinaryConv2d], nn.Module]] = Registry("layer override")


class RealWeightConv2d(SignInputConv2d):
    """A convolution of sign-binarized inputs (clipped straight-through gradient) with real
    weights used as they are: ``conv(sign(x), W)`` (BNAS's leftover layers)."""

    weight_precision: ClassVar[int] = 32

    def binary_weight(self) -> torch.Tensor:
        return self.weight


@OVERRIDES.register("real_weight")
def real_weight(conv: BinaryConv2d) -> nn.Module:
    """``conv`` as a :class:`RealWeightConv2d` with its weight and bias (sign inputs only)."""
    if not isinstance(conv, SignInputConv2d):
        raise BnasError(f"the real_weight override keeps sign(x) inputs; a {type(conv).__name__} "
                        f"binarizes its inputs otherwise")
    layer = RealWeightConv2d(conv.in_channels, conv.out_channels, conv.kernel_size[0],
                             stride=conv.stride[0], padding=conv.padding[0],
                             dilation=conv.dilation[0], groups=conv.groups,
                             bias=conv.bias is not None)
    with torch.no_grad():
        layer.weight.copy_(conv.weight)
        if conv.bias is not None:
            layer.bias.copy_(conv.bias)
    return layer.to(conv.weight.device)


def apply_overrides(model: nn.Module, overrides: Mapping[str, str]) -> None:
    """Replace each named binary convolution of ``model`` by ``OVERRIDES[kind]`` of it, in
    place; ``model.layer_overrides`` records them."""
    modules = dict(model.named_modules())
    for name, kind in sorted(overrides.items()):
        make = OVERRIDES.get(kind)
        conv = modules.get(name)
        if not isinstance(conv, BinaryConv2d):
            raise BnasError(f"layer override for '{name}': the network has no binary "
                            f"convolution of that name")
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name], child, make(conv))
    model.layer_overrides = dict(sorted(overrides.items()))
