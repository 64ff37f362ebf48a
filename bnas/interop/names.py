"""Where each module of a bnas network sits in the seeds' own model definitions.

For every module of a bnas network that holds tensors, :func:`reference_modules` gives the
module names the seeds' code uses for it (several where the projects differ, e.g. ``linear``
in the CIFAR ResNets and ``fc`` in the ImageNet ones). The names were read off the model
definitions of RBNN (lmbxmu/RBNN), ReCU (z-hXu/ReCU) and SiMaN (lmbxmu/SiMaN), which share them:

* ResNets: ``conv1``/``bn1`` (stem), ``layer{s}.{b}.conv1/bn1/conv2/bn2`` (blocks, ``s`` from 1),
  ``layer{s}.{b}.nonlinear1/nonlinear2`` (SiMaN's PReLU), ``layer{s}.{b}.shortcut.{k}`` (CIFAR)
  or ``layer{s}.{b}.downsample.{k}`` (ImageNet) for the 1x1 convolution and its BatchNorm,
  ``bn2`` (the BatchNorm1d before the classifier) and ``linear`` / ``fc``;
* VGG-small: ``conv{k}``, ``bn{k}`` and ``nonlinear{k}`` for the k-th convolution (from 0) and
  the BatchNorm and activation after it, ``fc``.

BNAS (gistvision/bnas, ``model.py`` / ``model_imagenet.py``) names its cell networks as bnas
does, except: an operation's convolution is ``op.0`` (bnas: ``conv``), the cell operations are
``_ops`` (bnas: ``ops``), the reduction cells' residual is ``preprocess_res`` (bnas:
``residual``) and the ImageNet network's reduction cells call their preprocessing
``preprocess0_red`` / ``preprocess1_red``.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import BnasError
from ..model.fixed import ResNet1w1a, VGGSmall1w1a
from ..model.network import CellNetwork
from ..registry import Registry

Names = dict[str, tuple[str, ...]]
NAMERS: Registry[Callable[[nn.Module], Names]] = Registry("network layout")

#: bnas block sub-module -> the seeds' names for it.
_BLOCK_PARTS = {"conv1": ("conv1",), "bn1": ("bn1",), "conv2": ("conv2",), "bn2": ("bn2",),
                "act1": ("nonlinear1",), "act2": ("nonlinear2",)}


@NAMERS.register(ResNet1w1a.__name__)
def resnet_names(model: nn.Module) -> Names:
    """The seeds' names of a :class:`~bnas.model.fixed.ResNet1w1a`'s modules."""
    names: Names = {"stem.0": ("conv1",), "stem.1": ("bn1",), "bn": ("bn2",),
                    "classifier": ("linear", "fc")}
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            ours, theirs = f"stages.{s}.{b}", f"layer{s + 1}.{b}"
            for part, refs in _BLOCK_PARTS.items():
                names[f"{ours}.{part}"] = tuple(f"{theirs}.{r}" for r in refs)
            for k, _ in enumerate(block.shortcut.children()):
                names[f"{ours}.shortcut.{k}"] = (f"{theirs}.shortcut.{k}",
                                                 f"{theirs}.downsample.{k}")
    return names


@NAMERS.register(VGGSmall1w1a.__name__)
def vgg_small_names(model: nn.Module) -> Names:
    """The seeds' names of a :class:`~bnas.model.fixed.VGGSmall1w1a`'s modules: each BatchNorm
    and activation is numbered after the convolution before it."""
    names: Names = {"classifier": ("fc",)}
    conv = -1
    for i, module in enumerate(model.features):
        if isinstance(module, nn.Conv2d):
            conv += 1
            names[f"features.{i}"] = (f"conv{conv}",)
        elif isinstance(module, nn.BatchNorm2d):
            names[f"features.{i}"] = (f"bn{conv}",)
        elif list(module.parameters()):
            names[f"features.{i}"] = (f"nonlinear{conv}",)
    return names


def _operation(ours: str, theirs: tuple[str, ...]) -> Names:
    """A BatchNorm -> convolution operation: ``bn`` and ``conv`` (BNAS: ``bn`` and ``op.0``)."""
    return {f"{ours}.bn": tuple(f"{t}.bn" for t in theirs),
            f"{ours}.conv": tuple(f"{t}.op.0" for t in theirs)}


@NAMERS.register(CellNetwork.__name__)
def cell_network_names(model: nn.Module) -> Names:
    """BNAS's names of a :class:`~bnas.model.network.CellNetwork`'s modules."""
    names: Names = {"classifier": ("classifier",)}
    if model.family == "cifar":
        names.update(_operation("stem", ("stem",)))
    else:
        names.update({f"{stem}.{i}": (f"{stem}.{i}",) for stem in ("stem0", "stem1")
                      for i, _ in enumerate(getattr(model, stem))})
    for i, cell in enumerate(model.cells):
        c = f"cells.{i}"
        for pre in ("preprocess0", "preprocess1"):
            names.update(_operation(f"{c}.{pre}", (f"{c}.{pre}", f"{c}.{pre}_red")))
        for k, _ in enumerate(cell.ops):
            names.update(_operation(f"{c}.ops.{k}", (f"{c}._ops.{k}",)))
        if cell.residual is not None:
            names.update({f"{c}.residual.{j}": (f"{c}.preprocess_res.{j}",)
                          for j, _ in enumerate(cell.residual.children())})
    return names


def reference_modules(model: nn.Module) -> Names:
    """bnas module name -> the seeds' candidate names, for every module of ``model``'s kind."""
    kind = type(model).__name__
    if kind not in NAMERS:
        raise BnasError(f"importing weights into a {kind} is not supported (importable: "
                        f"{', '.join(NAMERS.names())})")
    return NAMERS.get(kind)(model)
