"""The architecture step: the diversity objective and first- or second-order DARTS.

Objective (BNAS, Kim et al., ECCV 2020, Sec. 3.3, "diversity"): on a batch of the
architecture split,

    L_arch = CE_val - lambda * exp(-epoch / tau) * mean_e H(softmax(alpha_e)),

where ``H(p) = -sum_k p_k log p_k`` and the mean runs over every edge of both cell types
(``lambda = 1``, ``tau = 7.7``, ``epoch`` counted from 0). BNAS's code sums the reduction
cell's entropy over one row only (a stale loop index); here every row counts. A search for cost
as well (``--cost``) adds a term of the alphas alone, ``W * C(alpha) / C_max`` or a budget
penalty (:mod:`bnas.search.cost`).

Optimiser: Adam, lr 3e-4, betas (0.5, 0.999), weight decay 1e-3 (BNAS / DARTS).

* ``order=1`` (BNAS): the gradient of ``L_arch`` at the current weights ``w``.
* ``order=2`` (DARTS, Liu et al., ICLR 2019, Eqs. 6-8): the gradient at the weights after
  one virtual SGD step ``w' = w - xi * (momentum * buffer + grad L_train(w) + wd * w)``,
  minus ``xi`` times the Hessian-vector product, approximated by finite differences:
  ``(grad_alpha L_train(w+) - grad_alpha L_train(w-)) / (2 eps)`` with
  ``w+- = w +- eps * grad_w' L_val(w')``, ``eps = 0.01 / ||grad_w' L_val(w')||``;
  ``xi`` is the current weight learning rate. The virtual steps run on a scratch supernet
  (built once, loaded with the searched one's state each step), so the searched network and
  its binarizer state are untouched.

With several processes, every gradient that enters the step is averaged over them, so all
processes take the same step.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import BnasError
from .network import SearchNetwork

Average = Callable[[Sequence[torch.Tensor]], None]
#: A term of the architecture loss that depends on the alphas only (e.g. the expected cost).
AlphaTerm = Callable[[Sequence[torch.Tensor]], torch.Tensor]


def mean_edge_entropy(alphas: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over every row of every alpha matrix of the entropy of its softmax."""
    rows = [-(F.softmax(a, dim=-1) * F.log_softmax(a, dim=-1)).sum(dim=-1) for a in alphas]
    return torch.cat(rows).mean()


def diversity_weight(epoch: int, lam: float, tau: float) -> float:
    """``lambda * exp(-epoch / tau)``: the exponentially annealed weight of the entropy."""
    return lam * math.exp(-epoch / tau)


def _no_average(tensors: Sequence[torch.Tensor]) -> None:
    """Single process: nothing to average."""


class Architect:
    """Takes architecture steps for ``net`` (see the module docstring)."""

    def __init__(self, net: SearchNetwork, *, lr: float = 3e-4, betas: tuple[float, float] = (0.5, 0.999),
                 weight_decay: float = 1e-3, lam: float = 1.0, tau: float = 7.7, order: int = 1,
                 average: Average = _no_average, cost: AlphaTerm | None = None) -> None:
        if order not in (1, 2):
            raise BnasError(f"--order must be 1 or 2, got {order}")
        self.net, self.lam, self.tau, self.order, self.average = net, lam, tau, order, average
        self.cost = cost
        self.optimizer = torch.optim.Adam(net.arch_parameters(), lr=lr, betas=betas,
                                          weight_decay=weight_decay)
        self.scratch = net.new() if order == 2 else None

    def objective(self, logits: torch.Tensor, target: torch.Tensor, alphas: Sequence[torch.Tensor],
                  epoch: int) -> torch.Tensor:
        """``L_arch`` for given logits (the diversity and cost terms use the two alpha matrices,
        not the edge-normalisation betas that follow them with partial channels)."""
        alphas = alphas[:2]
        loss = (F.cross_entropy(logits, target)
                - diversity_weight(epoch, self.lam, self.tau) * mean_edge_entropy(alphas))
        return loss if self.cost is None else loss + self.cost(alphas)

    def step(self, x_val: torch.Tensor, y_val: torch.Tensor, epoch: int, *,
             x_train: torch.Tensor | None = None, y_train: torch.Tensor | None = None,
             weight_optimizer: torch.optim.Optimizer | None = None) -> torch.Tensor:
        """One Adam step on the alphas; returns the validation cross-entropy (detached).
        Second order also needs the training batch and the weight optimizer."""
        if self.order == 1:
            loss, grads = self._first_order(x_val, y_val, epoch)
        else:
            if x_train is None or weight_optimizer is None:
                raise ValueError("second-order steps need the training batch and weight optimizer")
            loss, grads = self._second_order(x_val, y_val, x_train, y_train, epoch, weight_optimizer)
        self.average(grads)
        for alpha, grad in zip(self.net.arch_parameters(), grads):
            alpha.grad = grad
        self.optimizer.step()
        return loss

    def _first_order(self, x: torch.Tensor, y: torch.Tensor, epoch: int):
        alphas = self.net.arch_parameters()
        with self.net.grads_for("arch"):
            logits = self.net(x)
            objective = self.objective(logits, y, alphas, epoch)
            grads = list(torch.autograd.grad(objective, alphas))
        return F.cross_entropy(logits.detach(), y), grads

    # -- second order ------------------------------------------------------------------------
    def _second_order(self, x_val, y_val, x_train, y_train, epoch, weight_optimizer):
        scratch = self.scratch
        scratch.load_state_dict(self.net.state_dict())
        weights = list(self.net.weight_parameters())
        s_weights = list(scratch.weight_parameters())
        s_alphas = scratch.arch_parameters()
        hyper = _sgd_hyper(weight_optimizer, weights)
        xi = hyper[0][0]
        # w' = w - xi * (momentum * buffer + grad + wd * w)
        with scratch.grads_for("weights"):
            g_train = list(torch.autograd.grad(F.cross_entropy(scratch(x_train), y_train), s_weights))
        self.average(g_train)
        with torch.no_grad():
            for p, w, g, (lr, momentum, wd, buf) in zip(s_weights, weights, g_train, hyper):
                step = g + wd * w
                if buf is not None:
                    step = step + momentum * buf
                p.copy_(w - lr * step)
        logits = scratch(x_val)
        objective = self.objective(logits, y_val, s_alphas, epoch)
        grads = torch.autograd.grad(objective, [*s_alphas, *s_weights])
        d_alpha, d_w = list(grads[:2]), list(grads[2:])
        self.average(d_w)
        implicit = self._hessian_vector(weights, s_weights, s_alphas, d_w, x_train, y_train)
        grads = [da - xi * h for da, h in zip(d_alpha, implicit)]
        return F.cross_entropy(logits.detach(), y_val), grads

    def _hessian_vector(self, weights, s_weights, s_alphas, vector, x, y):
        """``(grad_alpha L(w + eps v) - grad_alpha L(w - eps v)) / (2 eps)`` on the scratch net."""
        eps = 0.01 / torch.cat([v.flatten() for v in vector]).norm()
        grads = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, w, v in zip(s_weights, weights, vector):
                    p.copy_(w + sign * eps * v)
            with self.scratch.grads_for("arch"):
                loss = F.cross_entropy(self.scratch(x), y)
                grads.append(torch.autograd.grad(loss, s_alphas))
        self.average([*grads[0], *grads[1]])
        return [(gp - gn) / (2 * eps) for gp, gn in zip(*grads)]


def _sgd_hyper(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]):
    """``(lr, momentum, weight_decay, momentum_buffer or None)`` per parameter."""
    if not isinstance(optimizer, torch.optim.SGD):
        raise BnasError("second-order search needs the SGD weight optimizer (this binarizer "
                        f"trains with {type(optimizer).__name__})")
    found = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            found[id(p)] = (group["lr"], group["momentum"], group["weight_decay"], buf)
    return [found[id(p)] for p in params]
