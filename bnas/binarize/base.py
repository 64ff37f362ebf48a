"""The interface every binarization scheme implements.

A scheme is a :class:`Binarizer` (hyper-parameters, schedules, optimisation rules) that builds
:class:`BinaryConv2d` layers (how weights and input activations become 1-bit). Operations and
fixed models never decide how to binarize: they call ``binarizer.conv(...)``.

Layer state that changes with training (schedules such as RBNN's ``t``, ReCU's ``tau``, SiMaN's
mask) lives in module buffers or parameters, so ``model.state_dict()`` restores it exactly.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

import torch
from torch import nn

from .. import presets
from ..errors import BnasError
from .conv import conv_geometry, scaled_conv
from .hparams import SGD_SPACE
from .ste import sign_clipped_ste


OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]], float, float], torch.optim.Optimizer]] = {
    "sgd": lambda groups, lr, momentum: torch.optim.SGD(groups, lr=lr, momentum=momentum),
    "adam": lambda groups, lr, momentum: torch.optim.Adam(groups, lr=lr),
}


@dataclass(frozen=True)
class OptimizerSettings:
    """The run's optimizer settings: ``name`` (``sgd`` or ``adam``, for the parameters the
    scheme does not optimise itself), peak learning rate, SGD momentum and weight decay."""

    lr: float
    name: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0


@dataclass(frozen=True)
class RunSpec:
    """What a scheme may need to know of the run it is trained in: its length (schemes with
    scheduled hyper-parameters, such as Bop's) and the dataset family (``cifar`` or
    ``imagenet``: some papers optimise the two differently)."""

    epochs: int
    steps_per_epoch: int
    family: str = "cifar"


#: The attribute that marks a residual downsample branch (a reduction cell's residual, a ResNet
#: shortcut); some papers leave those branches out of weight decay (ReCU on ImageNet).
DOWNSAMPLE_BRANCH = "downsample_branch"


def downsample_branch(module: nn.Module) -> nn.Module:
    """``module``, marked as a residual downsample branch (:data:`DOWNSAMPLE_BRANCH`)."""
    setattr(module, DOWNSAMPLE_BRANCH, True)
    return module


def in_downsample_branches(model: nn.Module) -> set[int]:
    """The ids of every module of ``model`` inside a marked downsample branch."""
    return {id(m) for branch in model.modules() if getattr(branch, DOWNSAMPLE_BRANCH, False)
            for m in branch.modules()}


class FusedInput(str, Enum):
    """The activation binarizers the fused CPU kernels compute (:mod:`bnas.ops.native`), as a
    binary convolution declares its own (:attr:`BinaryConv2d.fused_input`)."""

    #: ``sign(x)``, gradient 1 where ``|x| < 1`` (:class:`SignInputConv2d`).
    SIGN_CLIPPED = "sign_clipped"
    #: ``sign(a / sqrt(var + eps))`` per sample, Bi-Real's backward (ReCU's training mode).
    SCALED_BIREAL = "scaled_bireal"


class BinaryConv2d(nn.Conv2d):
    """A convolution with 1-bit weights and 1-bit input activations.

    ``forward(x) = conv(binarize_input(x), binary_weight()) * weight_scale()``: the convolution
    of the binary input (+-1, and 0 where the scheme's sign gives 0 and in the zero padding) with
    the +-1 weight, then the per-output-channel scale as one multiply. Every product is +-1 or 0,
    so in float32 the convolution's sums are integers, exact in any order of summation (while
    ``|sum| < 2**24``); the output is ``alpha * integer`` rounded once, which a popcount engine
    reproduces bit for bit (:mod:`bnas.binarize.conv`; folding the scale into the weight,
    ``conv(x_b, alpha * sign(W))``, is the same maths but rounds at every accumulation).
    Splitting the steps lets a search supernet binarize one input once for several convolutions
    (:meth:`forward_binary_input`) and stack the weights of several (:mod:`bnas.search.fanout`).
    """

    weight_precision: ClassVar[int] = 1
    input_precision: int = 1
    #: The activation binarizer of this class's training-mode ``binarize_input`` that fused CPU
    #: kernels compute (``bnas.ops.lean.FUSED_PASSES``), or None. It holds
    #: only for the class that declares it with its ``binarize_input``: a subclass that
    #: overrides ``binarize_input`` is not fused unless it declares its own.
    fused_input: ClassVar[FusedInput | None] = None

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias)

    def binarize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Map real activations to the binary values the convolution sees."""
        raise NotImplementedError

    def binary_weight(self) -> torch.Tensor:
        """The 1-bit weight the convolution uses, in the weight's shape: values in {-1, +1}
        (0 only where the scheme's sign maps 0 to 0), differentiable w.r.t. the latent weight
        with the scheme's gradient. Its scale is :meth:`weight_scale`, never folded in."""
        raise NotImplementedError

    def weight_scale(self) -> torch.Tensor | None:
        """The per-output-channel scale ``(O,)`` that multiplies the convolution's output
        (differentiable w.r.t. whatever it is computed from), or None for a scheme without one."""
        return None

    def forward_binary_input(self, xb: torch.Tensor) -> torch.Tensor:
        """The convolution of an input that :meth:`binarize_input` already produced."""
        y = scaled_conv(xb, self.binary_weight(), self.weight_scale(), conv_geometry(self),
                        self.groups)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_binary_input(self.binarize_input(x))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", w{self.weight_precision}a{self.input_precision}"


class SignInputConv2d(BinaryConv2d):
    """A binary convolution whose activations are ``sign(x)`` with the clipped straight-through
    gradient (1 where ``|x| < 1``; XNOR-Net, Rastegari et al., ECCV 2016; BNN, Hubara et al.,
    NeurIPS 2016). Training cells fuse this binarizer with the BatchNorm before it
    (:mod:`bnas.ops.native`)."""

    fused_input = FusedInput.SIGN_CLIPPED

    def binarize_input(self, x: torch.Tensor) -> torch.Tensor:
        return sign_clipped_ste(x)


class BinaryLinear(nn.Module):
    """A fully-connected layer with 1-bit weights and 1-bit inputs, as the scheme's 1x1
    :class:`BinaryConv2d` (``self.conv``, weight ``(out, in, 1, 1)``) applied to the features
    viewed as a 1x1 map: ``conv(binarize_input(x), binary_weight()) * weight_scale()`` with
    the scheme's own input binarizer, weight binarizer and scale (for per-sample input
    statistics the sample's features are its ``(C, 1, 1)`` map). ``forward`` takes and returns
    ``(N, features)``.
    """

    def __init__(self, conv: BinaryConv2d) -> None:
        super().__init__()
        self.conv = conv

    @property
    def in_features(self) -> int:
        return self.conv.in_channels

    @property
    def out_features(self) -> int:
        return self.conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x[:, :, None, None]).flatten(1)


class Binarizer:
    """A binarization scheme: builds binary convolutions and says how they are trained.

    Subclasses set ``name``, ``paper``, ``conv_class``, ``hparams`` (defaults of their
    keyword arguments, validated in :meth:`validate`), ``tune_space`` (the ranges ``bnas tune``
    samples by default: the optimizer's settings and the scheme's hyper-parameters), ``recipes``
    (the name of the training preset of their paper per dataset family, see
    :mod:`bnas.presets`), ``networks`` (for a shared model-zoo name, the genotype of the network
    the paper's own code builds under that name, where it differs) and ``epoch_schedule``
    (whether :meth:`set_epoch` sets a schedule that a new layer starts at).
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    conv_class: ClassVar[type[BinaryConv2d]] = BinaryConv2d
    hparams: ClassVar[dict[str, Any]] = {}
    tune_space: ClassVar[dict[str, dict[str, Any]]] = SGD_SPACE
    recipes: ClassVar[dict[str, str]] = {}
    networks: ClassVar[dict[str, str]] = {}
    epoch_schedule: ClassVar[bool] = False

    def __init__(self, **hparams: Any) -> None:
        unknown = sorted(set(hparams) - set(self.hparams))
        if unknown:
            known = ", ".join(sorted(self.hparams)) or "none"
            raise BnasError(f"binarizer '{self.name}' has no hyper-parameter "
                            f"{', '.join(unknown)} (it takes: {known})")
        self.config_values: dict[str, Any] = {**self.hparams, **hparams}
        for key, value in self.config_values.items():
            setattr(self, key, value)
        self.validate()

    @classmethod
    def recipe(cls, family: str) -> dict[str, Any]:
        """The settings of this scheme's training recipe for a dataset family (``cifar`` or
        ``imagenet``); empty when the scheme has none for it."""
        return presets.read(cls.recipes[family]) if family in cls.recipes else {}

    @classmethod
    def paper_network(cls, arch: object) -> str | None:
        """The genotype this scheme's paper trained under the model-zoo name ``arch``, when it
        is another network than ``arch`` (e.g. SiMaN's ``resnet20_1w1a`` has PReLU)."""
        return cls.networks.get(arch) if isinstance(arch, str) else None

    def validate(self) -> None:
        """Raise :class:`BnasError` for impossible hyper-parameters."""

    def config(self) -> dict[str, Any]:
        """A dict that :func:`bnas.binarize.get` turns back into an equal binarizer."""
        return {"name": self.name, **self.config_values}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config_values.items())
        return f"{type(self).__name__}({args})"

    # -- building -------------------------------------------------------------------------
    def conv(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
             padding: int = 0, dilation: int = 1, groups: int = 1, bias: bool = False) -> BinaryConv2d:
        """A binary convolution of this scheme, set up by :meth:`init_layer`."""
        layer = self.conv_class(in_channels, out_channels, kernel_size, stride=stride,
                                padding=padding, dilation=dilation, groups=groups, bias=bias)
        self.init_layer(layer)
        return layer

    def init_layer(self, layer: BinaryConv2d) -> None:
        """Set up a new layer: a scheme whose layers follow an epoch schedule
        (:attr:`epoch_schedule`) starts it at the epoch-0 values."""
        if self.epoch_schedule:
            self.set_epoch(layer, 0, 1)

    def linear(self, in_features: int, out_features: int) -> BinaryLinear:
        """A binary fully-connected layer of this scheme (its 1x1 convolution, so that every
        scheme's rules, schedules and optimizer routing apply to it unchanged)."""
        return BinaryLinear(self.conv(in_features, out_features, 1))

    def binary_convs(self, model: nn.Module) -> Iterator[BinaryConv2d]:
        """The binary convolutions of ``model`` that belong to this scheme."""
        return (m for m in model.modules() if isinstance(m, self.conv_class))

    # -- training hooks -------------------------------------------------------------------
    def set_epoch(self, model: nn.Module, epoch: int, epochs: int) -> None:
        """Update schedules at the start of ``epoch`` (0-based) of ``epochs``."""

    def before_batch(self, model: nn.Module, epoch: int, batch: int) -> None:
        """Called before every training batch (``batch`` is 0-based within the epoch)."""

    def measured_gradients(self, model: nn.Module) -> list[torch.Tensor]:
        """The gradients whose joint norm :meth:`clip_grad_norm_` bounds: by default every
        parameter's own. A scheme whose latent-weight gradient is a linear transform of the
        gradient its paper clips returns the latter."""
        return [p.grad for p in model.parameters() if p.grad is not None]

    def clip_grad_norm_(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """Scale every gradient of ``model`` by ``min(1, max_norm / (norm + 1e-6))``, ``norm``
        the joint 2-norm of :meth:`measured_gradients` (``torch.nn.utils.clip_grad_norm_``'s
        rule); returns ``norm``."""
        measured = self.measured_gradients(model)
        if not measured:
            return torch.zeros(())
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in measured]))
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
        return total

    def param_groups(self, model: nn.Module, weight_decay: float,
                     family: str = "cifar") -> list[dict[str, Any]]:
        """Optimizer parameter groups: by default every parameter with ``weight_decay``."""
        return [{"params": [p for p in model.parameters() if p.requires_grad],
                 "weight_decay": weight_decay}]

    def optimizer(self, model: nn.Module, settings: OptimizerSettings,
                  run: RunSpec | None = None) -> torch.optim.Optimizer:
        """The optimizer this scheme trains ``model`` with in ``run`` (by default SGD or Adam
        over :meth:`param_groups`; a standalone call, without a run, means a CIFAR-family one)."""
        if settings.name not in OPTIMIZERS:
            raise BnasError(f"unknown optimizer '{settings.name}'; known: "
                            f"{', '.join(sorted(OPTIMIZERS))}")
        groups = self.param_groups(model, settings.weight_decay, run.family if run else "cifar")
        return OPTIMIZERS[settings.name](groups, settings.lr, settings.momentum)
