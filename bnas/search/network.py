"""The BNAS supernet: stem, search cells, classifier and the architecture parameters.

Layout as in BNAS's search network (Kim et al., ECCV 2020; DARTS's, Liu et al., ICLR 2019):
a real CIFAR stem (BN -> 3x3 conv to ``3C`` -> ReLU), ``layers`` search cells with reductions
at ``L // 3`` and ``2L // 3`` (channels double there), global average pooling and a linear
classifier. The architecture parameters ``alphas_normal`` and ``alphas_reduce`` are
registered ``nn.Parameter``s of shape ``(n_edges, n_ops)`` initialised to ``1e-3 * N(0, 1)``;
all cells of a type share theirs.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..binarize import Binarizer, get as get_binarizer
from ..model.network import reduction_layers
from ..ops import SPACES, RealConvOp
from . import partial as pc
from . import topology
from .cell import CELLS
from .autograd import fast_layout
from .fanout import FanOut

ARCH_NAMES = ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce")
GRAD_MODES = ("both", "weights", "arch")


class SearchNetwork(nn.Module):
    """The supernet searched by :mod:`bnas.search.loop`.

    ``impl`` picks the cell implementation (``"fast"`` or ``"reference"``, same maths).
    """

    def __init__(self, num_classes: int, c: int = 16, layers: int = 8, steps: int = 4,
                 space: str = "bnas", binarizer: str | Binarizer = "plain", impl: str = "fast",
                 stem_multiplier: int = 3, partial: int = 1) -> None:
        super().__init__()
        self._settings = dict(num_classes=num_classes, c=c, layers=layers, steps=steps,
                              impl=impl, stem_multiplier=stem_multiplier, partial=partial)
        self.partial = partial
        self.space = SPACES.canonical(space)
        self.op_names = SPACES.get(self.space)
        self.steps, self.layers, self.c = steps, layers, c
        self.binarizer = get_binarizer(binarizer)
        self.grad_mode = "both"
        cell_class = CELLS.get(impl)
        c_stem = stem_multiplier * c
        self.stem = RealConvOp(3, c_stem, 3, 1, 1)
        c_prev_prev, c_prev, c_curr = c_stem, c_stem, c
        reduction_prev = False
        reductions = reduction_layers(layers)
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                c_curr *= 2
            cell = cell_class(c_prev_prev, c_prev, c_curr, reduction, reduction_prev,
                              residual=i > 0, space=self.space, binarizer=self.binarizer,
                              steps=steps, partial=partial)
            self.cells.append(cell)
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, cell.multiplier * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)
        shape = (topology.n_edges(steps), len(self.op_names))
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(shape))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(shape))
        if partial > 1:  # PC-DARTS's edge normalisation (bnas.search.partial)
            self.betas_normal = nn.Parameter(1e-3 * torch.randn(shape[0]))
            self.betas_reduce = nn.Parameter(1e-3 * torch.randn(shape[0]))

    def new(self) -> SearchNetwork:
        """A freshly built supernet of the same shape and scheme, on the same device, with a
        copy of this one's state (DARTS's ``Network.new``)."""
        twin = SearchNetwork(space=self.space, binarizer=get_binarizer(self.binarizer.config()),
                             **self._settings)
        param = next(self.parameters())
        twin.to(device=param.device, dtype=param.dtype).load_state_dict(self.state_dict())
        return twin

    # -- parameters ------------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """The alphas (normal, reduce), then with partial channels the betas (normal, reduce)."""
        betas = [self.betas_normal, self.betas_reduce] if self.partial > 1 else []
        return [self.alphas_normal, self.alphas_reduce, *betas]

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter but the architecture's."""
        return (p for name, p in self.named_parameters() if name not in ARCH_NAMES)

    def weights_view(self) -> nn.Module:
        """A container of the weight-carrying modules (no alphas), for a binarizer's
        ``optimizer`` / ``param_groups``, which look at modules and parameters."""
        return nn.ModuleList([self.stem, self.cells, self.classifier])

    def edge_weights(self) -> dict[str, torch.Tensor]:
        """``softmax(alpha)`` per cell type (detached), rows = edges, columns = operations."""
        return {"normal": F.softmax(self.alphas_normal.detach(), dim=-1),
                "reduce": F.softmax(self.alphas_reduce.detach(), dim=-1)}

    def derivation_weights(self) -> dict[str, torch.Tensor]:
        """What a genotype is derived from: :meth:`edge_weights`, scaled row by row by the
        normalised betas with partial channels (PC-DARTS)."""
        weights = self.edge_weights()
        if self.partial == 1:
            return weights
        betas = {"normal": self.betas_normal.detach(), "reduce": self.betas_reduce.detach()}
        return {k: pc.derivation_weights(w, betas[k], self.steps) for k, w in weights.items()}

    @contextmanager
    def grads_for(self, mode: str):
        """Within the block, the forward pass prepares gradients for ``"weights"`` only
        (alphas are constants), ``"arch"`` only (the binary weights are constants, so no weight
        gradient is computed), or ``"both"`` (the default)."""
        if mode not in GRAD_MODES:
            raise ValueError(f"grad mode must be one of {GRAD_MODES}, got {mode!r}")
        previous = self.grad_mode
        self._set_grad_mode(mode)
        try:
            yield self
        finally:
            self._set_grad_mode(previous)

    def _set_grad_mode(self, mode: str) -> None:
        self.grad_mode = mode
        for module in self.modules():
            if isinstance(module, FanOut):
                module.weights_frozen = mode == "arch"

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alphas = {"normal": self.alphas_normal, "reduce": self.alphas_reduce}
        betas = ({"normal": self.betas_normal, "reduce": self.betas_reduce}
                 if self.partial > 1 else {})
        if self.grad_mode == "weights":
            alphas = {k: a.detach() for k, a in alphas.items()}
            betas = {k: b.detach() for k, b in betas.items()}
        weights = {k: F.softmax(a, dim=-1) for k, a in alphas.items()}
        edges = {k: pc.edge_weights(b, self.steps) for k, b in betas.items()}
        s0 = s1 = self.stem(fast_layout(x))
        for cell in self.cells:
            kind = "reduce" if cell.reduction else "normal"
            s0, s1 = s1, cell(s0, s1, weights[kind], edges.get(kind))
        return self.classifier(torch.flatten(self.global_pooling(s1), 1))
