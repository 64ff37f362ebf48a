"""The eval-mode float model in ONNX, checked and timed in onnxruntime.

:func:`export_onnx` writes a model built by :func:`bnas.build_model` to an ONNX file in standard
operators only, computing what the PyTorch model computes with the same roundings wherever a
sign depends on them:

* every binary convolution becomes :class:`ExportedBinaryConv`: its eval-mode input binarizer
  (:data:`bnas.deploy.convert.ACTIVATIONS`: ``Sign(x)``, or ``Sign(x - mean)`` with each
  sample's mean over ``(C, H, W)`` for RBNN's and SiMaN's standardised activations, whose
  positive scaling leaves the sign alone; ``Sign`` maps 0 to 0 as ``torch.sign`` does, and a
  scheme whose sign maps 0 to +1 gets ``Where(x >= 0, 1, -1)``), a ``Conv`` with the +-1 weight
  as a constant (the schemes' custom autograd functions and weight transforms evaluated once,
  in eval mode, from the model itself) and a ``Mul`` by the per-output-channel scale: the float
  model's ``conv(sign(x), sign(W)) * alpha``, exact integer sums and one rounding
  (:mod:`bnas.binarize.conv`);
* every ``BatchNorm2d`` becomes :class:`ExportedBatchNorm`, PyTorch's own ``x * scale + shift``
  (onnxruntime's ``BatchNormalization`` rounds differently, and the inputs of a binarization
  cluster on a few values: a cluster within rounding of zero would flip as a whole);
* everything else (stems, poolings, shortcuts, cells, classifier) is exported as PyTorch runs it
  in eval mode, through the reference-path modules (not the lean training path).

The batch dimension is dynamic. :func:`compare_onnx` runs the file in onnxruntime next to the
PyTorch model (max abs difference, top-1 agreement), with the graph rewrites that would fold a
scale into a convolution's weights turned off (:data:`REASSOCIATING`); :func:`onnx_latency`
times it at a batch size and thread count with every rewrite on.

onnx and onnxruntime are an optional extra (``pip install 'bnas[onnx]'``); without them these
functions raise :class:`MissingExtra`, a :class:`~bnas.errors.BnasError` (one line, exit 2 in
the command line) that is also an ``ImportError``.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..binarize.base import BinaryConv2d
from ..binarize.conv import Geometry, conv_geometry
from ..errors import BnasError
from ..ops.lean import set_lean
from ..runio import atomic_write
from .convert import ACTIVATIONS
from .layers import Activation

#: The ONNX operator set written by default (onnxruntime 1.16 and later run it).
DEFAULT_OPSET = 17


class MissingExtra(BnasError, ImportError):
    """An optional package of the ``onnx`` extra is not installed."""


def require(package: str) -> ModuleType:
    """Import ``package`` (``onnx`` or ``onnxruntime``), or raise :class:`MissingExtra`."""
    try:
        return importlib.import_module(package)
    except ImportError:
        error = MissingExtra(f"{package} is not installed: pip install 'bnas[onnx]' "
                             f"(onnx and onnxruntime)")
        error.name = package
        raise error from None


def activation_of(conv: BinaryConv2d) -> Activation:
    """The eval-mode input binarizer of ``conv``: the :data:`ACTIVATIONS` entry of its class or
    of the nearest base class that has one."""
    if conv.input_precision != 1:
        raise BnasError(f"{type(conv).__name__} keeps its activations real "
                        f"(input precision {conv.input_precision}); only binary activations "
                        f"are exported")
    for cls in type(conv).__mro__:
        if cls.__name__ in ACTIVATIONS:
            return ACTIVATIONS.get(cls.__name__)
    raise BnasError(f"no eval-mode activation binarizer is known for {type(conv).__name__} "
                    f"(bnas.deploy.convert.ACTIVATIONS)")


def binarize(x: torch.Tensor, activation: Activation) -> torch.Tensor:
    """``activation`` applied to ``x`` in operators that export to standard ONNX ones."""
    threshold = activation.threshold(x)
    z = x if threshold is None else x - threshold.view(-1, 1, 1, 1)
    if activation.zero_is_zero:
        return torch.sign(z)
    return torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))


class ExportedBinaryConv(nn.Module):
    """An eval-mode binary convolution as constants and standard operators:
    ``conv(binarize(x), weight) * scale + bias``."""

    def __init__(self, conv: BinaryConv2d, weight: torch.Tensor, scale: torch.Tensor | None,
                 activation: Activation) -> None:
        super().__init__()
        self.activation = activation
        self.geometry: Geometry = conv_geometry(conv)
        self.groups = conv.groups
        self.register_buffer("weight", weight)
        self.register_buffer("scale", None if scale is None else scale.view(1, -1, 1, 1))
        bias = None if conv.bias is None else conv.bias.detach().clone().view(1, -1, 1, 1)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(binarize(x, self.activation), self.weight, None, *self.geometry, self.groups)
        if self.scale is not None:
            y = y * self.scale
        return y if self.bias is None else y + self.bias


def bn_terms(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` ``(C,)`` of an eval-mode BatchNorm as PyTorch's CPU kernel computes
    them: ``scale = gamma * (1 / sqrt(var + eps))`` in IEEE float32 (numpy's correctly rounded
    operations; ``torch.sqrt`` is not always) and ``shift`` read off the module itself (its
    output at ``x = 0``)."""
    var = bn.running_var.detach().cpu().float().numpy()
    scale = np.float32(1.0) / np.sqrt(var + np.float32(bn.eps))
    if bn.weight is not None:
        scale = scale * bn.weight.detach().cpu().float().numpy()
    with evaluating(bn), torch.no_grad():
        shift = bn(bn.running_mean.new_zeros(1, bn.num_features, 1, 1)).reshape(-1)
    return torch.from_numpy(scale), shift.detach().cpu().float()


@functools.cache
def torch_bn_is_fused() -> bool:
    """Whether PyTorch's eval BatchNorm computes ``x * scale + shift`` with one rounding (a
    fused multiply-add) on this machine rather than two: probed on random statistics."""
    gen = torch.Generator().manual_seed(0)
    bn = nn.BatchNorm2d(16).eval()
    with torch.no_grad():
        for t, (lo, hi) in ((bn.running_mean, (-2, 2)), (bn.running_var, (0.01, 3)),
                            (bn.weight, (-2, 2)), (bn.bias, (-2, 2))):
            t.copy_(torch.rand(16, generator=gen) * (hi - lo) + lo)
        x = torch.randn(4, 16, 9, 9, generator=gen) * 3
        scale, shift = bn_terms(bn)
        return torch.equal(bn(x), affine(x, scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1), True))


def affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, fused: bool) -> torch.Tensor:
    """``x * scale + shift`` rounded once (``fused``: in float64, where the product of two
    float32 values is exact and the sum's sign is the exact one) or twice (float32)."""
    if fused:
        return (x.double() * scale.double() + shift.double()).float()
    return x * scale + shift


class ExportedBatchNorm(nn.Module):
    """An eval-mode ``BatchNorm2d`` as PyTorch computes it, in standard operators:
    ``x * scale + shift`` with PyTorch's ``scale`` and ``shift`` (:func:`bn_terms`), rounded
    once as its fused multiply-add does (``Cast`` to float64, ``Mul``, ``Add``, ``Cast`` back)
    where :func:`torch_bn_is_fused`, else twice. onnxruntime's ``BatchNormalization`` rounds
    otherwise; the inputs of a binarization cluster on a few values (a ReLU's zeros,
    ``alpha * integer``), and a cluster within rounding of zero would take the other sign as a
    whole."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        scale, shift = bn_terms(bn)
        self.fused = torch_bn_is_fused()
        self.register_buffer("scale", scale.view(1, -1, 1, 1))
        self.register_buffer("shift", shift.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return affine(x, self.scale, self.shift, self.fused)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; afterwards every module's own mode again."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes.items():
            module.training = mode


def exportable(model: nn.Module) -> nn.Module:
    """A float32 CPU copy of ``model`` in eval mode whose forward uses standard operators only:
    each binary convolution replaced by an :class:`ExportedBinaryConv` whose weights are read
    from ``model`` itself in eval mode (``model``'s own mode is restored; a copied plain-scheme
    convolution would project its weights again), the reference-path modules instead of the lean training
    path."""
    convs = {name: m for name, m in model.named_modules() if isinstance(m, BinaryConv2d)}
    parts = {}
    with evaluating(model), torch.no_grad():
        for name, conv in convs.items():
            scale = conv.weight_scale()
            parts[name] = (conv.binary_weight().detach().clone(),
                           None if scale is None else scale.detach().clone(),
                           activation_of(conv))
    out = copy.deepcopy(model).eval()
    set_lean(out, False)
    modules = dict(out.named_modules())
    for name, module in modules.items():
        if name in parts:
            replacement = ExportedBinaryConv(module, *parts[name])
        elif type(module) is nn.BatchNorm2d and module.track_running_stats:
            replacement = ExportedBatchNorm(module)
        else:
            continue
        if not name:  # the model is itself one layer
            return replacement.cpu().float()
        parent, _, child = name.rpartition(".")
        setattr(modules[parent], child, replacement)
    return out.cpu().float()


def _input_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise BnasError(f"input shape must be four positive integers (N, C, H, W), got {shape}")
    return shape


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...],
                opset: int = DEFAULT_OPSET) -> Path:
    """Write ``model`` in eval mode to the ONNX file ``path`` (atomically) for inputs of
    ``input_shape`` ``(N, C, H, W)``, the batch size ``N`` left dynamic; returns the path.
    The file's input is named ``input`` and its output ``logits``."""
    shape = _input_shape(input_shape)
    onnx = require("onnx")
    graph = exportable(model)
    example = torch.zeros(shape, dtype=torch.float32)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return Path(path)


#: onnxruntime's graph rewrites that multiply a following constant into a convolution's
#: weights: a binary convolution's scale would then be summed ``+-alpha`` at a time (rounding at
#: every accumulation) instead of multiplying the exact integer sum once.
REASSOCIATING = ["ConvMulFusion", "ConvAddFusion", "ConvBNFusion"]


def onnx_session(path: str | Path, threads: int, exact: bool = True):
    """An onnxruntime CPU session of the file at ``path`` on ``threads`` threads (intra-op;
    operators run one at a time), graph optimisations on; ``exact`` turns off those in
    :data:`REASSOCIATING`, so that the binary convolutions round as the float model's."""
    ort = require("onnxruntime")
    if not Path(path).is_file():
        raise BnasError(f"no ONNX file at {path}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=REASSOCIATING if exact else None)
    except Exception as e:  # onnxruntime raises its own exception types for unreadable files
        raise BnasError(f"{path} is not an ONNX model onnxruntime can run: "
                        f"{str(e).splitlines()[0]}") from None


def run_onnx(session, x: torch.Tensor) -> torch.Tensor:
    """The session's output for the batch ``x`` (float32, on the CPU)."""
    feed = {session.get_inputs()[0].name: x.detach().float().cpu().numpy()}
    return torch.from_numpy(session.run(None, feed)[0])


@dataclass(frozen=True)
class OnnxComparison:
    """onnxruntime's outputs against PyTorch's on the same inputs: the largest absolute
    difference, the largest absolute PyTorch output (the scale the difference is judged at),
    and the fraction of samples whose top-1 class agrees."""

    max_abs_diff: float
    max_abs_output: float
    top1_agreement: float
    samples: int


def compare_onnx(model: nn.Module, path: str | Path, inputs: torch.Tensor,
                 threads: int = 1) -> OnnxComparison:
    """Run ``inputs`` through ``model`` in eval mode (each module's mode is restored) and through the
    ONNX file at ``path`` in onnxruntime, and compare the outputs."""
    session = onnx_session(path, threads)
    with evaluating(model), torch.no_grad():
        expected = model(inputs).float().cpu()
    got = run_onnx(session, inputs)
    if got.shape != expected.shape:
        raise BnasError(f"the ONNX model's output has shape {tuple(got.shape)}, PyTorch's "
                        f"{tuple(expected.shape)}: not an export of this model")
    return OnnxComparison(
        max_abs_diff=float((got - expected).abs().max()),
        max_abs_output=float(expected.abs().max()),
        top1_agreement=float((got.argmax(dim=1) == expected.argmax(dim=1)).float().mean()),
        samples=expected.shape[0])


def onnx_latency(path: str | Path, batch: int, threads: int, min_time: float = 0.3,
                 min_runs: int = 5) -> float:
    """Median seconds of one onnxruntime run of the file at ``path`` on a random batch of
    ``batch`` inputs with ``threads`` threads, every graph optimisation on (onnxruntime at its
    fastest), timed as :func:`bnas.deploy.bench.latency` times the other engines."""
    from .bench import latency

    if batch < 1 or threads < 1:
        raise BnasError(f"batch and threads must be positive, got {batch} and {threads}")
    session = onnx_session(path, threads, exact=False)
    spec = session.get_inputs()[0]
    if not all(isinstance(d, int) for d in spec.shape[1:]):
        raise BnasError(f"{path}: the input's shape {spec.shape} is not fixed but for the batch")
    x = np.random.default_rng(0).standard_normal((batch, *spec.shape[1:]), dtype=np.float32)
    feed = {spec.name: x}
    return latency(lambda: session.run(None, feed), min_time, min_runs)
