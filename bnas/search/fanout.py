"""The fast path of the BNAS supernet: :class:`FanOut` computes *all the mixed operations
that leave one node* together; it computes what :class:`~bnas.search.mixed.MixedOp` computes
edge by edge, using facts that hold exactly for that maths:

* every binary convolution of an edge (and of every edge leaving the same node) normalises
  the same input with its own ``BatchNorm(affine=False)``; with batch statistics (and
  identical running statistics, which start equal and see the same inputs) these are one
  computation, so the input is normalised and binarized once per node, not once per
  convolution;
* the binary convolutions of the same kernel geometry on all those edges read the same
  binary input, so they run as one convolution whose output channels stack the edges'
  weights (each weight is still binarized on its own by its scheme);
* a pooling followed by ``BatchNorm(affine=False)`` is the same for every edge leaving a
  node, so it is computed once and weighted per edge;
* ``zeroise`` outputs zeros: it adds nothing and receives no gradient, so it is not computed
  (it still takes part in the softmax that normalises the weights);
* the backward pass of ``weight * relu(conv)`` needs the sign of the convolution's output
  only, so one byte per element is kept instead of a float copy; the gradient with respect to
  the architecture weight ``<g, relu(y_e)>`` equals ``<conv^T(g * 1[y_e > 0]), x_b>`` (the
  convolution is linear), so it comes out of the transposed convolution that the input
  gradient needs anyway, run grouped by edge, at no extra multiply-accumulates;
* poolings and the cells' real preprocessing keep only tensors that other operations keep
  anyway and recompute the rest in the backward pass (:mod:`bnas.search.autograd`); binary
  inputs are kept as int8.

Each stacked convolution computes ``conv(x_b, sign weights) * scale`` as the modules do
(:class:`~bnas.binarize.base.BinaryConv2d`): exact integer sums, then each output channel's
scale (``weight_scale``, e.g. RBNN's, ReCU's and SiMaN's ``alpha``) as one multiply, so the
stacked output is bit-identical to the edges' own convolutions. The fast path binarizes a
node's input once, with the first convolution's ``binarize_input``: schemes whose activation
binarizer is the same for all their layers (all those of :mod:`bnas.binarize`) compute exactly
what the reference path computes.

How each candidate is computed is declared by its operation's registry entry
(:attr:`bnas.ops.OpInfo.fast`, per stride): stacked with the node's other binary convolutions,
pooled once per node, the identity, a binary factorized reduce, or not at all (``zeroise``). An
operation that declares none is computed edge by edge, as the reference path does (each edge
its own module), so any registered operation can be searched on the fast path.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..binarize.base import Binarizer, BinaryConv2d
from ..binarize.conv import conv_geometry as _geometry
from ..binarize.conv import scale_channels
from ..errors import BnasError
from ..ops import OPS, SPACES, BinConvOp, BinFactorizedReduce, FastKind, Identity, Zero, make_op
from .autograd import BinaryMix, fast_layout, pool_values, pooled_norms
from .mixed import POOLS, search_op


def _binary_weight(conv: BinaryConv2d, detach: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``conv``'s +-1 weight and its per-channel scale (or None), without autograd if ``detach``."""
    if detach:
        with torch.no_grad():
            return _binary_weight(conv, False)
    return conv.binary_weight(), conv.weight_scale()


#: The module a fast-path treatment computes (what the operation's factory must build for it).
_MODULES: dict[FastKind, tuple[type[nn.Module], ...]] = {
    FastKind.ZERO: (Zero,), FastKind.POOL: POOLS, FastKind.IDENTITY: (Identity,),
    FastKind.CONV: (BinConvOp,), FastKind.REDUCE: (BinFactorizedReduce,)}


def _check_module(name: str, kind: FastKind, module: nn.Module) -> None:
    """Refuse a registry entry whose declared treatment does not fit the module it builds."""
    if not isinstance(module, _MODULES[kind]):
        raise BnasError(f"operation '{name}' declares the fast path's '{kind.value}' treatment "
                        f"but builds a {type(module).__name__}")


class FanOut(nn.Module):
    """Every mixed operation leaving one node, computed together (see the module docstring).

    ``forward(x, w)`` takes the node ``x`` and the softmax weights ``w`` ``(E, n_ops)`` of its
    ``E`` outgoing edges (targets in increasing order) and returns ``(N, E, C, H', W')``.
    Parameters: ``convs[op][e]`` is edge ``e``'s convolution of binary operation ``op``;
    ``reduces[op][e]`` holds the two convolutions of a strided ``skip``; ``edge_ops[op][e]`` is
    edge ``e``'s module of an operation computed edge by edge.
    """

    def __init__(self, c: int, stride: int, space: str, binarizer: Binarizer, targets: int) -> None:
        super().__init__()
        self.channels, self.targets, self.stride = c, targets, stride
        self.weights_frozen = False  # set by SearchNetwork.grads_for("arch")
        self.bn = nn.BatchNorm2d(c, affine=False)
        self.convs = nn.ModuleDict()
        self.pools = nn.ModuleDict()
        self.reduces = nn.ModuleDict()
        self.edge_ops = nn.ModuleDict()
        conv_cols, linear_cols, reduce_cols, edge_cols = [], [], [], []
        self.linear_ops: list[str | None] = []
        for col, name in enumerate(SPACES.get(space)):
            kind = OPS.get(name).fast[stride > 1]
            if kind is None:  # edge by edge, as the reference path computes it
                self.edge_ops[name] = nn.ModuleList(search_op(name, c, stride, binarizer)
                                                    for _ in range(targets))
                edge_cols.append(col)
                continue
            probes = [make_op(name, c, stride, binarizer, affine=False) for _ in range(targets)]
            _check_module(name, kind, probes[0])
            if kind is FastKind.CONV:
                self.convs[name] = nn.ModuleList(p.conv for p in probes)
                conv_cols.append(col)
            elif kind is FastKind.POOL:
                self.pools[name] = nn.Sequential(probes[0], nn.BatchNorm2d(c, affine=False))
                self.linear_ops.append(name)
                linear_cols.append(col)
            elif kind is FastKind.IDENTITY:
                self.linear_ops.append(None)
                linear_cols.append(col)
            elif kind is FastKind.REDUCE:
                self.reduces[name] = nn.ModuleList(
                    nn.ModuleDict({"a": p.conv_a, "b": p.conv_b}) for p in probes)
                reduce_cols.append(col)
        if not (conv_cols or linear_cols or reduce_cols or edge_cols):
            raise BnasError(f"search space '{space}' has no operation besides zeroise")
        self.register_buffer("conv_cols", torch.tensor(conv_cols, dtype=torch.long), persistent=False)
        self.register_buffer("linear_cols", torch.tensor(linear_cols, dtype=torch.long),
                             persistent=False)
        self.reduce_cols, self.edge_cols = reduce_cols, edge_cols

    def _binarizing_conv(self) -> BinaryConv2d:
        for convs in self.convs.values():
            return convs[0]
        return next(iter(self.reduces.values()))[0]["a"]

    def _stacked(self, convs: Sequence[BinaryConv2d]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The +-1 weights of ``convs`` stacked along output channels, and their scales (or
        None; one scheme, so all or none of them have one)."""
        parts = [_binary_weight(conv, self.weights_frozen) for conv in convs]
        scales = [scale for _, scale in parts]
        return (torch.cat([sign for sign, _ in parts]),
                None if scales[0] is None else torch.cat(scales))

    def _linear_terms(self, x: torch.Tensor, pooled: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The edge-independent terms in ``linear_ops`` order: ``x`` for identity, else the
        next of the ``pooled`` tensors."""
        remaining = iter(pooled)
        return [x if name is None else next(remaining) for name in self.linear_ops]

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = fast_layout(x)
        needs_binary = bool(self.convs) or bool(self.reduces)
        z = self.bn(x) if needs_binary else None
        xb = self._binarizing_conv().binarize_input(z) if needs_binary else None
        pools = [self.pools[name] for name in self.linear_ops if name is not None]
        linear = self._linear_terms(x, pooled_norms(pools, x))
        geometry = [_geometry(convs[0]) for convs in self.convs.values()]
        stacked = [self._stacked(convs) for convs in self.convs.values()]
        out = None
        if geometry or linear:
            out = BinaryMix.apply(geometry, self.channels, w.index_select(1, self.conv_cols),
                                   w.index_select(1, self.linear_cols), xb,
                                   lambda: self._linear_terms(x, pool_values(pools, x)),
                                   *(sign for sign, _ in stacked),
                                   *(scale for _, scale in stacked), *linear)
        for col, reduces in zip(self.reduce_cols, self.reduces.values()):
            term = w[:, col].view(1, -1, 1, 1, 1) * self._factorized_reduce(z, xb, reduces)
            out = term if out is None else out + term
        for col, ops in zip(self.edge_cols, self.edge_ops.values()):
            term = w[:, col].view(1, -1, 1, 1, 1) * torch.stack([op(x) for op in ops], dim=1)
            out = term if out is None else out + term
        return out

    def _factorized_reduce(self, z: torch.Tensor, xb: torch.Tensor,
                           reduces: nn.ModuleList) -> torch.Tensor:
        """``relu(cat(conv_a(b(z)), conv_b(b(shift(z)))))`` for every edge (BinFactorizedReduce)."""
        shifted = F.pad(z[:, :, 1:, 1:], (0, 1, 0, 1))
        first = reduces[0]
        parts = []
        for key, inp in (("a", xb), ("b", first["b"].binarize_input(shifted))):
            conv = first[key]
            sign, scale = self._stacked([r[key] for r in reduces])
            y = scale_channels(F.conv2d(inp, sign, None, *_geometry(conv)), scale)
            parts.append(y.view(y.shape[0], self.targets, conv.out_channels, *y.shape[2:]))
        return torch.cat(parts, dim=2).relu()

