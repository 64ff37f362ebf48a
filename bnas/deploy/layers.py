"""Inference-only modules that run a float model's binary operations on the packed kernels.

Each holds its binary weights as bits (``bits``: one bit per weight, 1 for -1, in the float
weight's ``(O, C, kh, kw)`` order; the kernels' word layout is built from it on first use) and
its per-output-channel scale ``alpha`` (absent for scale-free schemes), and reproduces the float
module's eval-mode output bit for bit: ``conv(b(x), sign(W)) * alpha`` with the scheme's
activation binarizer ``b`` (:class:`Activation`) and the float model's zero padding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BnasError
from .kernels import RELU, BinaryConvPlan, ConvCall, Epilogue, Geometry, convolve_all, kernels


@dataclass(frozen=True)
class Activation:
    """How a scheme binarizes a convolution's input in eval mode: ``sign(x)`` (``centred``
    False) or ``sign(x - mean)`` with the mean over each sample's ``(C, H, W)`` (RBNN's and
    SiMaN's standardised activations, whose positive scaling leaves the sign alone);
    ``zero_is_zero``: sign(0) = 0 (torch.sign) rather than +1."""

    centred: bool = False
    zero_is_zero: bool = True

    def threshold(self, x: torch.Tensor) -> torch.Tensor | None:
        """The per-sample value the input is compared with (None: 0), computed as the float
        model's standardisation computes its mean."""
        if not self.centred:
            return None
        rows = x.reshape(x.shape[0], -1)
        return (rows.sum(dim=1, keepdim=True) / rows.shape[1]).reshape(-1).contiguous()


def _inference_only(self: nn.Module, mode: bool = True) -> nn.Module:
    if mode:
        raise BnasError("a packed model is inference-only (it has no float weights to train)")
    return nn.Module.train(self, False)


def _reset_after_load(module: nn.Module, keys: object) -> None:
    """After a state dict is loaded: forget what was derived from the old buffers."""
    module.reset()


class PackedConv2d(nn.Module):
    """A binary convolution on packed activations (the float model's ``BinaryConv2d``)."""

    train = _inference_only

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, geo: Geometry,
                 activation: Activation, scaled: bool, bias: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.geo, self.activation = geo, activation
        bits = -(-out_channels * in_channels * kernel_size * kernel_size // 8)
        self.register_buffer("bits", torch.zeros(bits, dtype=torch.uint8))
        self.register_buffer("alpha", torch.ones(out_channels) if scaled else None)
        self.register_buffer("bias", torch.zeros(out_channels) if bias else None)
        # flat indices of the binary weights exactly 0 (held as +1 in bits), None when none
        self.register_buffer("zero_weights", None)
        self._plan: BinaryConvPlan | None = None
        self.register_load_state_dict_post_hook(_reset_after_load)

    def reset(self) -> None:
        """Forget the kernels' weights (after the buffers changed)."""
        self._plan = None

    def __getstate__(self) -> dict:
        """A pickled copy (``torch.save`` of the module) leaves the kernels' plan out: its
        records hold this process's addresses."""
        return {**self.__dict__, "_plan": None}

    #: Buffers a saved model holds only when they are not None (read by bnas.deploy.fileio).
    optional_buffers = ("zero_weights",)

    def set_weights(self, negative: torch.Tensor, alpha: torch.Tensor | None,
                    bias: torch.Tensor | None, zero: torch.Tensor | None = None) -> None:
        """Store the binary weights (``negative``: True where -1; ``zero``: True where exactly
        0, or None), the scale and the bias."""
        flat = negative.reshape(-1).numpy().astype(np.uint8)
        self.bits.copy_(torch.from_numpy(np.packbits(flat, bitorder="little")))
        self.zero_weights = (None if zero is None or not bool(zero.any()) else
                             torch.nonzero(zero.reshape(-1)).reshape(-1))
        if alpha is not None:
            self.alpha.copy_(alpha)
        if bias is not None:
            self.bias.copy_(bias)
        self.reset()

    def negative(self) -> torch.Tensor:
        """The binary weights as booleans ``(O, C, k, k)``, True where -1."""
        k = self.kernel_size
        count = self.out_channels * self.in_channels * k * k
        bits = np.unpackbits(self.bits.numpy(), count=count, bitorder="little")
        return torch.from_numpy(bits.astype(bool)).view(self.out_channels, self.in_channels, k, k)

    def zero(self) -> torch.Tensor | None:
        """The binary weights exactly 0 as booleans ``(O, C, k, k)``, or None when none."""
        if self.zero_weights is None:
            return None
        k = self.kernel_size
        mask = torch.zeros(self.out_channels * self.in_channels * k * k, dtype=torch.bool)
        mask[self.zero_weights] = True
        return mask.view(self.out_channels, self.in_channels, k, k)

    def plan(self) -> BinaryConvPlan:
        if self._plan is None:
            self._plan = BinaryConvPlan(self.negative(), self.alpha, self.geo, self.bias,
                                        self.zero())
        return self._plan

    def call(self, x: torch.Tensor, scale: torch.Tensor | None = None,
             shift: torch.Tensor | None = None, epilogue: Epilogue = Epilogue()) -> ConvCall:
        """The convolution of ``x`` (of ``x * scale + shift`` per channel, torch's eval
        BatchNorm arithmetic, when given), plus the bias, then ``epilogue``: as
        :func:`~bnas.deploy.kernels.convolve_all` runs it."""
        if x.dtype != torch.float32 or x.device.type != "cpu":
            raise BnasError(f"the packed engine runs float32 tensors on the CPU, got "
                            f"{x.dtype} on {x.device.type}")
        x = x.contiguous()
        return ConvCall(self.plan(), x, scale, shift, self.activation.threshold(x),
                        self.activation.zero_is_zero, epilogue)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None,
                shift: torch.Tensor | None = None, epilogue: Epilogue = Epilogue()
                ) -> torch.Tensor:
        """:meth:`call`'s convolution, run (one call of the kernels)."""
        return convolve_all(kernels(), [self.call(x, scale, shift, epilogue)])[0]

    def extra_repr(self) -> str:
        g = self.geo
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={g.stride}, dilation={g.dilation}, pad={g.pad}, "
                f"{'centred' if self.activation.centred else 'sign'}, "
                f"{'scaled' if self.alpha is not None else 'no scale'}")


class _BatchNormSign(nn.Module):
    """A BatchNorm whose output feeds packed convolutions only: the packing computes
    ``x * scale + shift`` itself, as torch's eval BatchNorm does, when the kernels' probe found
    torch's arithmetic (and the activation is a plain sign); otherwise torch normalises.

    A subclass is one binary operation in two halves, so that a network step can run the
    convolutions of several operations in one call of the kernels
    (:class:`bnas.deploy.cell.PackedEvalCell`):
    :meth:`calls` (the convolutions of an input) and :meth:`finish` (the operation's output from
    theirs)."""

    train = _inference_only

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.bn = bn
        self._terms: tuple[torch.Tensor, torch.Tensor] | None = None
        self.register_load_state_dict_post_hook(_reset_after_load)

    def reset(self) -> None:
        """Forget the BatchNorm's terms (after its buffers changed)."""
        self._terms = None

    def normalised(self, x: torch.Tensor, *convs: PackedConv2d,
                   epilogue: Epilogue = Epilogue()) -> list[ConvCall]:
        """Each convolution of the normalised ``x``, followed by ``epilogue``."""
        k = kernels()
        if k.fma is None or any(c.activation.centred for c in convs):
            z = self.bn(x)
            return [c.call(z, epilogue=epilogue) for c in convs]
        if self._terms is None:
            self._terms = k.bn_terms(self.bn)
        return [c.call(x, *self._terms, epilogue) for c in convs]

    def calls(self, x: torch.Tensor) -> list[ConvCall]:
        """The operation's binary convolutions of input ``x``."""
        raise NotImplementedError

    def finish(self, outs: list[torch.Tensor]) -> torch.Tensor:
        """The operation's output from its convolutions' outputs."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(convolve_all(kernels(), self.calls(x)))


class PackedBinConvOp(_BatchNormSign):
    """BatchNorm -> binary conv -> ReLU (:class:`bnas.ops.BinConvOp`) on the packed kernels."""

    def __init__(self, bn: nn.BatchNorm2d, conv: PackedConv2d) -> None:
        super().__init__(bn)
        self.conv = conv

    def calls(self, x: torch.Tensor) -> list[ConvCall]:
        return self.normalised(x, self.conv, epilogue=RELU)

    def finish(self, outs: list[torch.Tensor]) -> torch.Tensor:
        return outs[0]

    def forward(self, x: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        y = super().forward(x)
        return y if factor is None else y * factor


class PackedFactorizedReduce(_BatchNormSign):
    """BatchNorm -> two binary 1x1 stride-2 convs, the second on the input shifted by one pixel
    -> concatenation -> ReLU (:class:`bnas.ops.layers.BinFactorizedReduce`). The float model
    fills the shift with zeros before binarizing; for a sign with sign(0) = 0 that is zero
    padding, so the second convolution reads the same input from origin (1, 1)
    (:data:`SHIFTED`); other binarizers (a per-sample mean) see the zeros as values, so the
    shifted input is built as the float model builds it. The ReLU, elementwise, is each
    convolution's."""

    def __init__(self, bn: nn.BatchNorm2d, conv_a: PackedConv2d, conv_b: PackedConv2d) -> None:
        super().__init__(bn)
        self.conv_a, self.conv_b = conv_a, conv_b

    def calls(self, x: torch.Tensor) -> list[ConvCall]:
        if self.conv_b.geo == SHIFTED:
            return self.normalised(x, self.conv_a, self.conv_b, epilogue=RELU)
        z = self.bn(x)
        shifted = F.pad(z[:, :, 1:, 1:], (0, 1, 0, 1))
        return [self.conv_a.call(z, epilogue=RELU), self.conv_b.call(shifted, epilogue=RELU)]

    def finish(self, outs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(outs, dim=1)


class PackedMaxPool2d(nn.MaxPool2d):
    """A max pooling computed by the engine's kernels (:meth:`Kernels.maxpool`: torch's values,
    a maximum being exact in any order, several times faster on a network's small planes at
    batch 1); a configuration they do not run (dilation, ceil mode, indices, a non-square
    window) runs in torch."""

    train = _inference_only

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__(pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                         pool.return_indices, pool.ceil_mode)
        square = [v if isinstance(v, int) else (v[0] if v[0] == v[1] else None)
                  for v in (self.kernel_size, self.stride, self.padding, self.dilation)]
        self._window = (None if None in square or square[3] != 1 or self.ceil_mode
                        or self.return_indices else tuple(square[:3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self._window is None or x.dim() != 4 or x.dtype != torch.float32
                or x.device.type != "cpu"):
            return super().forward(x)
        return kernels().maxpool(x.contiguous(), *self._window)


#: The geometry of the factorized reduce's second convolution on the unshifted input.
SHIFTED = Geometry(1, 1, 2, 1, (0, 0, 1, 1), (1, 1))
