"""Counting what a binary network costs: parameters, FLOPs, binary operations, packed size.

:func:`profile` runs one forward pass with hooks on every ``nn.Conv2d`` and ``nn.Linear`` and
counts, per layer, its parameters and its multiply-accumulates (MACs) by precision. A layer
tells its precision through ``weight_precision`` and ``input_precision`` (1 on
:class:`bnas.binarize.BinaryConv2d`; a plain convolution or linear layer is 32-bit). As in
larq's model summary, a MAC is as precise as the more precise of its two operands, so it is
binary only when both the weight and the input are 1-bit: a binary-weight convolution fed
real-valued activations cannot run as XNOR-popcount.

Conventions of the binary-network literature (XNOR-Net, Rastegari et al., ECCV 2016; Bi-Real
Net, Liu et al., ECCV 2018), in which the BNAS paper (Kim et al., ECCV 2020) reports its costs:

* **FLOPs** are the real-valued MACs (one multiply-accumulate counts as one FLOP);
* **BOPs** are the binary MACs;
* **OPs** = FLOPs + BOPs / 64 (a 64-bit CPU does 64 binary MACs per XNOR-popcount step).

Only convolutions and linear layers are counted; batch norm, pooling, activations and
additions are not, as in those papers. **Binary parameters** are the weights of 1-bit-weight
layers; every other parameter (stem, classifier, batch norm, a scheme's scaling factors and
biases) is real-valued. The **packed size** stores a binary weight in 1 bit and a real
parameter in 32 bits: ``binary_params / 8 + real_params * 4`` bytes.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .data.registry import dataset_info
from .errors import BnasError

REAL_BITS = 32
BITS_PER_WORD = 64
COUNTED_LAYERS = (nn.Conv2d, nn.Linear)


def weight_bits(module: nn.Module) -> int:
    """Bit width of ``module``'s weight (32 unless the layer says otherwise)."""
    return int(getattr(module, "weight_precision", REAL_BITS))


def input_bits(module: nn.Module) -> int:
    """Bit width of the activations ``module`` multiplies (32 unless the layer says otherwise)."""
    return int(getattr(module, "input_precision", REAL_BITS))


@dataclass(frozen=True)
class LayerProfile:
    """One convolution or linear layer; shapes and MACs are per sample."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    params: int
    weight_bits: int
    input_bits: int
    macs: int

    @property
    def binary(self) -> bool:
        """Whether its MACs are binary (1-bit weights *and* 1-bit inputs)."""
        return max(self.weight_bits, self.input_bits) == 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "output_shape": list(self.output_shape),
                "params": self.params, "weight_bits": self.weight_bits,
                "input_bits": self.input_bits, "binary": self.binary, "macs": self.macs}


@dataclass(frozen=True)
class Profile:
    """The cost of a network for one sample of shape ``input_size`` (see the module docstring)."""

    input_size: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    binary_params: int
    flops: int
    bops: int
    layers: tuple[LayerProfile, ...]

    @property
    def real_params(self) -> int:
        return self.params - self.binary_params

    @property
    def ops(self) -> float:
        """FLOPs + BOPs / 64 (Bi-Real Net's combined figure)."""
        return self.flops + self.bops / BITS_PER_WORD

    @property
    def size_bytes(self) -> float:
        """Packed size: 1 bit per binary weight, 32 bits per real-valued parameter."""
        return self.binary_params / 8 + self.real_params * REAL_BITS / 8

    @property
    def float_size_bytes(self) -> int:
        """Size with every parameter stored as float32."""
        return self.params * REAL_BITS // 8

    def to_dict(self) -> dict[str, Any]:
        return {"input_size": list(self.input_size), "output_shape": list(self.output_shape),
                "params": self.params, "binary_params": self.binary_params,
                "real_params": self.real_params, "flops": self.flops, "bops": self.bops,
                "ops": self.ops, "size_bytes": self.size_bytes,
                "float_size_bytes": self.float_size_bytes,
                "layers": [layer.to_dict() for layer in self.layers]}

    def summary(self) -> str:
        """The totals, one figure per line."""
        ratio = self.float_size_bytes / self.size_bytes if self.size_bytes else 1.0
        rows = [
            ("input", _shape(self.input_size)),
            ("output", _shape(self.output_shape)),
            ("parameters", f"{self.params:,} (binary {self.binary_params:,}, "
                           f"real-valued {self.real_params:,})"),
            ("FLOPs", f"{si(self.flops)} (real-valued multiply-accumulates)"),
            ("BOPs", f"{si(self.bops)} (binary multiply-accumulates)"),
            ("OPs", f"{si(self.ops)} (FLOPs + BOPs/64)"),
            ("size", f"{self.size_bytes / 2**20:.2f} MiB packed (1 bit per binary weight, 32 per "
                     f"real parameter); {self.float_size_bytes / 2**20:.2f} MiB as float32, "
                     f"{ratio:.1f}x compression"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    def table(self) -> str:
        """The per-layer table: name, type, output shape, parameters, binary?, MACs."""
        header = ("layer", "type", "output", "params", "binary", "MACs")
        rows = [(layer.name, layer.type, _shape(layer.output_shape), f"{layer.params:,}",
                 "yes" if layer.binary else "no", f"{layer.macs:,}") for layer in self.layers]
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
        right = {3, 5}
        lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w)
                           for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                 for r in (header, *rows)]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def si(value: float) -> str:
    """``value`` with an SI prefix and two decimals: ``98.81 M``, ``2.06 G``, ``512``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:g}"


def default_input_size(model: nn.Module) -> tuple[int, int, int]:
    """``(3, s, s)`` for the dataset a model was built for (its ``dataset`` attribute)."""
    dataset = getattr(model, "dataset", None)
    if dataset is None:
        raise BnasError("give an input size: the model does not say which dataset it is for")
    size = dataset_info(dataset).image_size
    return (3, size, size)


def binary_params(model: nn.Module) -> int:
    """Number of 1-bit weights: the weights of layers whose ``weight_precision`` is 1."""
    return sum(m.weight.numel() for m in model.modules()
               if weight_bits(m) == 1 and isinstance(getattr(m, "weight", None), torch.Tensor))


@torch.no_grad()
def profile(model: nn.Module, input_size: Sequence[int] | None = None) -> Profile:
    """Profile ``model`` on one sample of shape ``input_size`` (``(C, H, W)``, no batch axis).

    ``input_size`` defaults to the image size of the dataset the model was built for. The
    forward pass runs in eval mode on a zero batch of one sample, on the model's device; each
    module's train/eval mode is restored afterwards.
    """
    input_size = tuple(default_input_size(model) if input_size is None else input_size)
    if not input_size or not all(isinstance(s, int) and s > 0 for s in input_size):
        raise BnasError(f"input size must be positive integers, got {input_size!r}")
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    names = {m: n for n, m in model.named_modules()}
    found: dict[nn.Module, dict[str, Any]] = {}

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        per_sample = output[0]
        stats = found.setdefault(module, {"macs": 0, "shape": tuple(per_sample.shape)})
        # each output element is a dot product over one row of the weight
        stats["macs"] += per_sample.numel() * module.weight[0].numel()

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, COUNTED_LAYERS)]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        output = model(torch.zeros((1, *input_size), device=device, dtype=dtype))
    finally:
        for hook in hooks:
            hook.remove()
        for m, mode in modes.items():
            m.training = mode
    layers = tuple(
        LayerProfile(name=names[m] or type(m).__name__, type=type(m).__name__,
                     output_shape=s["shape"],
                     params=sum(p.numel() for p in m.parameters(recurse=False)),
                     weight_bits=weight_bits(m), input_bits=input_bits(m), macs=s["macs"])
        for m, s in found.items())
    return Profile(input_size=input_size, output_shape=tuple(output.shape[1:]),
                   params=sum(p.numel() for p in model.parameters()),
                   binary_params=binary_params(model),
                   flops=sum(layer.macs for layer in layers if not layer.binary),
                   bops=sum(layer.macs for layer in layers if layer.binary),
                   layers=layers)
