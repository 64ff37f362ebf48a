"""Residual blocks (:class:`bnas.model.fixed.BasicBlock`, :class:`~bnas.model.fixed.BiRealBlock`)
run by the packed engine, each binary convolution's BatchNorm, shortcut addition and activation
in its own call of the kernels (an :class:`~bnas.deploy.kernels.Epilogue`).

In the float block every binary convolution is followed by three elementwise layers (BatchNorm,
the addition of a shortcut, Hardtanh or PReLU), each one pass over the output and, at batch 1,
a few microseconds of torch's dispatch: on a CIFAR ResNet-20 they take as long as the binary
convolutions. Here they are one pass in the kernels, computing torch's values (each step one
IEEE operation in torch's order, the BatchNorm with torch's terms). A block whose parts the
epilogue cannot compute (a convolution left in float, an activation of another kind, or
kernels whose BatchNorm arithmetic differs from torch's build) runs as the float block does,
layer by layer.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..model.fixed import BasicBlock, BiRealBlock
from ..registry import Registry
from .kernels import Epilogue, convolve_all, kernels
from .layers import PackedConv2d, _inference_only, _reset_after_load

#: ``(act, params)`` of an epilogue computing an activation module as torch does, by class name
#: (the module and the number of channels it sees).
ACTIVATIONS: Registry[Callable[[nn.Module, int], tuple[str, torch.Tensor | None]]] = Registry(
    "epilogue activation")
ACTIVATIONS.add("Identity", lambda m, c: ("none", None))
ACTIVATIONS.add("ReLU", lambda m, c: ("relu", None))
ACTIVATIONS.add("Hardtanh", lambda m, c: ("hardtanh", torch.tensor([m.min_val, m.max_val],
                                                                   dtype=torch.float32)))
ACTIVATIONS.add("PReLU", lambda m, c: ("prelu", m.weight.detach().float().expand(c).contiguous()))


class _FusedBlock(nn.Module):
    """What both packed blocks share: the epilogues of their two convolutions (cached until a
    state dict is loaded), or None when the block must run layer by layer."""

    train = _inference_only

    @classmethod
    def adopt(cls, block: nn.Module) -> None:
        """Make a converted float block (its convolutions packed) one of this class."""
        block.__class__ = cls
        block.register_load_state_dict_post_hook(_reset_after_load)
        block.reset()

    def reset(self) -> None:
        """Forget the epilogues (after the buffers changed)."""
        self.__dict__["_epilogues"] = None

    def epilogues(self) -> tuple[Epilogue, Epilogue] | None:
        """The epilogues (without residual) after ``conv1`` and ``conv2``: ``bn1``/``act1``
        and ``bn2``/``act2``; None when the block cannot run fused."""
        cached = self.__dict__.get("_epilogues")
        if cached is not None:
            return cached or None
        k = kernels()
        parts = []
        for conv, bn, act in ((self.conv1, self.bn1, self.act1), (self.conv2, self.bn2, self.act2)):
            kind = type(act).__name__
            if (not isinstance(conv, PackedConv2d) or type(bn) is not nn.BatchNorm2d
                    or bn.training or k.fma is None or kind not in ACTIVATIONS):
                self.__dict__["_epilogues"] = ()
                return None
            name, params = ACTIVATIONS.get(kind)(act, bn.num_features)
            parts.append(Epilogue(*k.bn_terms(bn), act=name, params=params))
        self.__dict__["_epilogues"] = tuple(parts)
        return self.__dict__["_epilogues"]

    def convolve(self, conv: PackedConv2d, x: torch.Tensor, epilogue: Epilogue,
                 residual: torch.Tensor | None = None) -> torch.Tensor:
        """``epilogue(conv(x) + residual)`` in one call of the kernels."""
        if residual is not None:
            epilogue = epilogue._replace(residual=residual.contiguous())
        return convolve_all(kernels(), [conv.call(x, epilogue=epilogue)])[0]


class PackedBasicBlock(_FusedBlock, BasicBlock):
    """``act2(bn2(conv2(act1(bn1(conv1(x))))) + shortcut(x))`` in two calls of the kernels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        epilogues = self.epilogues()
        if epilogues is None:
            return BasicBlock.forward(self, x)
        out = self.convolve(self.conv1, x, epilogues[0])
        return self.convolve(self.conv2, out, epilogues[1], self.shortcut(x))


class PackedBiRealBlock(_FusedBlock, BiRealBlock):
    """``h = act1(bn1(conv1(x)) + shortcut(x))``, ``act2(bn2(conv2(h)) + h)`` in two calls of
    the kernels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        epilogues = self.epilogues()
        if epilogues is None:
            return BiRealBlock.forward(self, x)
        out = self.convolve(self.conv1, x, epilogues[0], self.shortcut(x))
        return self.convolve(self.conv2, out, epilogues[1], out)


def fused(module: nn.Module) -> bool:
    """Whether ``module`` is a packed block that runs fused."""
    return isinstance(module, _FusedBlock) and module.epilogues() is not None
