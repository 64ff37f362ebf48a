"""Turning a float model into one that runs its binary operations on the packed kernels.

Conversion walks the module tree. A module whose class has an entry in :data:`CONVERTERS` is
replaced by the packed module the entry builds; a module in :data:`FLOAT_MODULES` stays as it is
(real-valued layers and the containers whose ``forward`` composes their children: stems,
average poolings, BatchNorm, shortcuts, cells, classifiers) and its children are converted
(max pooling, exact in any order, has a converter to the kernels' own); anything
else is refused with a :class:`BnasError` naming it, so an operation the engine cannot run never
runs silently in float. A new model plugs in by adding entries; a new scheme by adding its
convolution class to :data:`ACTIVATIONS`.

``convert(model, empty=True)`` builds the same structure without reading weights (the packed
buffers are placeholders that :func:`bnas.deploy.fileio.load` fills from a file).
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ..binarize.base import BinaryConv2d
from ..errors import BnasError
from ..registry import Registry
from .blocks import PackedBasicBlock, PackedBiRealBlock
from .cell import PackedEvalCell
from .kernels import Geometry
from .layers import (SHIFTED, Activation, PackedBinConvOp, PackedConv2d, PackedFactorizedReduce,
                     PackedMaxPool2d)

#: A scheme's activation binarizer in eval mode, by its convolution class.
ACTIVATIONS: Registry[Activation] = Registry("binary convolution class")
ACTIVATIONS.add("PlainConv2d", Activation())          # sign(x), sign(0) = 0
ACTIVATIONS.add("BopConv2d", Activation())            # sign(x)
ACTIVATIONS.add("ReCUConv2d", Activation())           # eval mode: sign of the raw input
ACTIVATIONS.add("RBNNConv2d", Activation(centred=True))   # sign(x - per-sample mean)
ACTIVATIONS.add("SiMaNConv2d", Activation(centred=True))
ACTIVATIONS.add("SignInputConv2d", Activation())      # sign(x): its subclasses (ONNX export)

#: ``converter(module, empty) -> packed module``, by float module class name.
Converter = Callable[[nn.Module, bool], nn.Module]
CONVERTERS: Registry[Converter] = Registry("packed converter")

#: Modules that run as they are in a packed model (their children are converted).
FLOAT_MODULES: frozenset[str] = frozenset({
    # torch's real-valued layers and containers
    "Sequential", "ModuleList", "ModuleDict", "Identity", "Conv2d", "Linear", "BatchNorm1d",
    "BatchNorm2d", "ReLU", "PReLU", "Hardtanh", "AvgPool2d", "AdaptiveAvgPool2d",
    "Flatten", "Dropout",
    # bnas's networks, blocks, cells and parameter-free operations
    "CellNetwork", "EvalCell", "ResNet1w1a", "VGGSmall1w1a", "BasicBlock", "BiRealBlock",
    "ZeroPadShortcut", "AvgPoolZeroPadShortcut", "RealConvOp", "Zero",
    # layer overrides (bnas.model.overrides): sign inputs with real weights, run in float
    "RealWeightConv2d",
    # the Bop papers' networks (bnas.model.bopnets) and the binary dense layer, whose 1x1
    # convolution child is packed like any binary convolution
    "Sequential1w1a", "BiRealNet", "BiRealUnit", "ShiftBatchNorm", "ChannelLayerNorm",
    "BinaryLinear",
})


#: Modules of :data:`FLOAT_MODULES` that run in a packed model with an inference ``forward`` of
#: their own: the class whose ``adopt`` makes them one once their children are converted.
PACKED_FORWARD: dict[str, type[nn.Module]] = {"EvalCell": PackedEvalCell,
                                              "BasicBlock": PackedBasicBlock,
                                              "BiRealBlock": PackedBiRealBlock}


def _float_conv(conv: nn.Module) -> bool:
    """Whether a binary operation's convolution is one that runs in float (an override)."""
    return type(conv).__name__ in FLOAT_MODULES


def binary_parts(conv: BinaryConv2d
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(negative, alpha, zero)`` of an eval-mode binary convolution: where its 1-bit weight
    (:meth:`~bnas.binarize.base.BinaryConv2d.binary_weight`) is -1, its per-output-channel
    scale (:meth:`~bnas.binarize.base.BinaryConv2d.weight_scale`; None for scale-free schemes)
    and where the weight is exactly 0 (torch.sign of a latent weight 0 in the plain, RBNN and
    ReCU schemes; None when nowhere). Raises for any other value."""
    with torch.no_grad():
        signs = conv.binary_weight().detach()
        alpha = conv.weight_scale()
        alpha = None if alpha is None else alpha.detach().reshape(-1).float().clone()
    if not bool(((signs == 1) | (signs == -1) | (signs == 0)).all()):
        raise BnasError(f"{type(conv).__name__} has binary weights other than -1, 0 and +1")
    zero = signs == 0
    return signs < 0, alpha, zero if bool(zero.any()) else None


def _check(conv: nn.Module) -> Activation:
    name = type(conv).__name__
    if name not in ACTIVATIONS:
        raise BnasError(f"the packed engine cannot run binary convolutions of class {name} "
                        f"(it runs: {', '.join(ACTIVATIONS.names())})")
    if getattr(conv, "input_precision", 1) != 1:
        raise BnasError(f"{name} keeps real-valued activations (w1a{conv.input_precision}): "
                        f"the packed engine runs 1-bit activations only")
    if conv.groups != 1 or conv.kernel_size[0] != conv.kernel_size[1]:
        raise BnasError(f"{name} with groups or a non-square kernel cannot be packed")
    return ACTIVATIONS.get(name)


def packed_conv(conv: BinaryConv2d, empty: bool, geo: Geometry | None = None) -> PackedConv2d:
    """The packed form of a binary convolution (its own padding unless ``geo`` is given)."""
    activation = _check(conv)
    k, p = conv.kernel_size[0], conv.padding[0]
    if geo is None:
        geo = Geometry(k, k, conv.stride[0], conv.dilation[0], (p, p, p, p))
    negative, alpha, zero = (None, None, None) if empty else binary_parts(conv)
    scaled = conv.weight_scale() is not None
    packed = PackedConv2d(conv.in_channels, conv.out_channels, k, geo, activation, scaled,
                          bias=conv.bias is not None)
    if not empty:
        packed.set_weights(negative, alpha, None if conv.bias is None else conv.bias.detach(),
                           zero)
    return packed


def _bn(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    return copy.deepcopy(bn).eval()


for _name in ACTIVATIONS.names():
    CONVERTERS.add(_name, lambda m, empty: packed_conv(m, empty))


@CONVERTERS.register("RealInputConv")
def _real_input_conv(op: nn.Module, empty: bool) -> nn.Module:
    """BinaryNet's first layer (binary weights, real inputs) runs in float: the packed kernels
    take 1-bit activations only."""
    return copy.deepcopy(op).eval()


@CONVERTERS.register("MaxPool2d")
def _max_pool(pool: nn.Module, empty: bool) -> nn.Module:
    """Max pooling (real-valued, but exact in any order) runs on the engine's kernels."""
    return PackedMaxPool2d(pool)


@CONVERTERS.register("BinConvOp")
def _bin_conv_op(op: nn.Module, empty: bool) -> nn.Module:
    if _float_conv(op.conv):
        return copy.deepcopy(op)
    return PackedBinConvOp(_bn(op.bn), packed_conv(op.conv, empty))


@CONVERTERS.register("BinFactorizedReduce")
def _factorized_reduce(op: nn.Module, empty: bool) -> nn.Module:
    if _float_conv(op.conv_a) or _float_conv(op.conv_b):
        return copy.deepcopy(op)
    activation = _check(op.conv_b)
    zero_padded = not activation.centred and activation.zero_is_zero
    return PackedFactorizedReduce(_bn(op.bn), packed_conv(op.conv_a, empty),
                                  packed_conv(op.conv_b, empty, SHIFTED if zero_padded else None))


def _replace(module: nn.Module, original: nn.Module, empty: bool, prefix: str) -> None:
    """Replace ``module``'s convertible children (a copy of ``original``'s), reading weights
    from ``original``'s: a copied scheme module may recompute its binarization (a weight
    projection keyed by the tensor's version) and differ in the last bit from the model's own."""
    for (name, child), source in zip(list(module.named_children()), original.children()):
        kind = type(child).__name__
        where = f"{prefix}{name}"
        if kind in CONVERTERS:
            setattr(module, name, CONVERTERS.get(kind)(source, empty))
        elif kind in FLOAT_MODULES:
            _replace(child, source, empty, f"{where}.")
            if kind in PACKED_FORWARD:
                PACKED_FORWARD[kind].adopt(child)
        else:
            raise BnasError(f"the packed engine cannot run {where} ({kind}); it runs "
                            f"{', '.join(CONVERTERS.names())} packed and "
                            f"{', '.join(sorted(FLOAT_MODULES))} as they are")


def convert(model: nn.Module, empty: bool = False) -> nn.Module:
    """An inference-only copy of ``model`` whose binary operations run packed (``model`` is put
    in eval mode and binarizes its weights as its own forward would; a model on a GPU is read
    from a CPU copy). Every module must be convertible or a known float module."""
    kind = type(model).__name__
    if kind not in FLOAT_MODULES:
        raise BnasError(f"the packed engine cannot run a {kind}")
    model.eval()
    if any(t.device.type != "cpu" for t in (*model.parameters(), *model.buffers())):
        model = copy.deepcopy(model).cpu()  # the packed kernels and the float layers: CPU
    packed = copy.deepcopy(model)
    _replace(packed, model, empty, "")
    packed.eval()
    for p in packed.parameters():
        p.requires_grad_(False)
    return packed
