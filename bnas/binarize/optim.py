"""Latent-free optimizers for binary weights, and one optimizer that routes parameters to several.

Bop (Helwegen et al., "Latent Weights Do Not Exist: Rethinking Binarized Neural Network
Optimization", NeurIPS 2019, Algorithm 2) keeps no real-valued latent weight. A binary weight
``w`` in {-1, +1} holds an exponential moving average of its gradient and flips when that average
has pushed in the same direction for long enough:

    m_t = m_{t-1} + gamma * (g_t - m_{t-1}),    m_0 = 0 (no bias correction)
    w_t = -w_{t-1}  if  w_{t-1} * m_t > tau  (strict), else w_{t-1}

``gamma`` (the adaptivity rate) plays the part of a learning rate: a high value converges fast
but trains noisily. ``tau`` (the threshold) sets how strong the signal must be: too high and no
weight flips, too low and weights flip on noise.

Bop2ndOrder (Suarez-Ramirez et al., "A Bop and Beyond: A Second Order Optimizer for Binarized
Neural Networks", CVPR Workshops 2021) also tracks the gradient's second raw moment and flips on
a normalised signal ``r``:

    v_t = v_{t-1} + sigma * (g_t^2 - v_{t-1})
    r_t = m_t / (sqrt(v_t) + 1e-10)                             (biased, the default)
    r_t = (m_t / gamma) / (sqrt(v_t / sigma) + 1e-10)           (bias_correction=True)
    w_t = -w_{t-1}  if  w_{t-1} * r_t > tau, else w_{t-1}

(the bias correction divides by ``gamma`` and ``sigma`` themselves, not by Adam's
``1 - (1 - gamma)^t``).

The new weight is ``s(-w)`` or ``s(w)`` with ``s(x) = +1 for x >= 0 (-0.0 included), else -1``,
so a weight that starts real-valued or at zero is binarised on the first step (``torch.sign``
would leave a zero weight at zero for ever). The closed form often used for this update,
``s(-sign(w * m - tau) * w)``, turns a -1 into +1 at the tie ``w * m == tau``; here the rule of
Algorithm 2 (flip only when ``w * m > tau``) holds at ties too.

Every hyper-parameter is a number or a schedule ``step -> value`` (:mod:`.schedules`); the value
used at step ``t`` (0-based) is the schedule's value before the step counter moves.

:class:`CaseOptimizer` (after larq's) hands every trainable parameter of a model to exactly one
of several optimizers, e.g. binary weights to Bop and everything else to Adam.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import BnasError
from .schedules import Hyper

#: ``predicate(module, param_name, param)``: whether a case's optimizer trains ``param``.
Predicate = Callable[[nn.Module, str, nn.Parameter], bool]
#: Builds an optimizer over exactly the parameters it is given.
Factory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def binary_sign(x: torch.Tensor) -> torch.Tensor:
    """``s(x)``: +1 where ``x >= 0`` (zero and -0.0 included), -1 elsewhere, in ``x``'s dtype."""
    return (x >= 0).to(x.dtype).mul_(2).sub_(1)


def is_binary_weight(module: nn.Module, name: str, param: nn.Parameter) -> bool:
    """The ``weight`` of a layer tagged ``weight_precision == 1`` (larq's
    ``Bop.is_binary_variable``); a predicate for :class:`CaseOptimizer`."""
    return name == "weight" and getattr(module, "weight_precision", 32) == 1


def _evaluate(closure: Callable[[], Any] | None) -> Any:
    """The loss ``closure`` returns, evaluated with gradients on (PyTorch's optimizer closure
    protocol), or None without a closure."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class _FlipOptimizer(torch.optim.Optimizer):
    """The step shared by Bop and Bop2ndOrder: a per-weight signal, then the flip rule.

    Param-group keys: the hyper-parameters named in ``schedulable`` (number or schedule) and
    ``step``, the number of steps the group has taken (saved with ``state_dict``).
    """

    schedulable: tuple[str, ...] = ("threshold", "gamma")

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self._last_flips: tuple[torch.Tensor | None, int] = (None, 0)
        super().__init__(params, {**defaults, "step": 0})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._hyper(param_group)  # reject impossible values now, not at the first step

    def _hyper(self, group: dict[str, Any]) -> dict[str, float]:
        """The group's hyper-parameters at its current step; BnasError for impossible ones."""
        step = group["step"]
        values = {}
        for key in self.schedulable:
            spec: Hyper = group[key]
            value = spec(step) if callable(spec) else spec
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value < 0):
                at = f" at step {step}" if callable(spec) else ""
                raise BnasError(f"{type(self).__name__}: {key} must be a finite number >= 0, "
                                f"got {value!r}{at}")
            values[key] = float(value)
        return values

    def _signal(self, state: dict[str, torch.Tensor], grad: torch.Tensor,
                group: dict[str, Any], hyper: dict[str, float]) -> torch.Tensor:
        """Update the moving averages in ``state``; return the signal compared with ``w``."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = _evaluate(closure)
        flips, count = [], 0
        for group in self.param_groups:
            hyper = self._hyper(group)
            for w in group["params"]:
                if w.grad is None:
                    continue
                signal = self._signal(self.state[w], w.grad, group, hyper)
                flip = w * signal > hyper["threshold"]
                sign = binary_sign(w)
                w.copy_(torch.where(flip, -sign, sign))
                flips.append(flip.sum())
                count += w.numel()
            group["step"] += 1
        self._last_flips = (torch.stack(flips).sum() if flips else None, count)
        return loss

    @property
    def last_flip_ratio(self) -> float:
        """Fraction of the weights updated by the last step that flipped (0.0 before any)."""
        flips, count = self._last_flips
        return float(flips) / count if count else 0.0


def _moving_average(state: dict[str, torch.Tensor], key: str, value: torch.Tensor,
                    rate: float) -> torch.Tensor:
    """``state[key] += rate * (value - state[key])``, starting from zeros."""
    if key not in state:
        state[key] = torch.zeros_like(value, memory_format=torch.preserve_format)
    avg = state[key]
    return avg.add_(value - avg, alpha=rate)


class Bop(_FlipOptimizer):
    """Bop, the binary optimizer (Helwegen et al., NeurIPS 2019, Algorithm 2).

    Args:
        params: binary weights (or parameter groups); real-valued ones are binarised with
            ``s`` on their first step.
        threshold: ``tau``, how strong the averaged gradient must be to flip a weight.
        gamma: the adaptivity rate of the gradient's moving average ``m`` (like a learning rate).

    Both may be numbers or schedules ``step -> value``. ``m`` lives in ``self.state`` and is saved
    by ``state_dict()``; :attr:`last_flip_ratio` is the share of weights the last step flipped.
    """

    def __init__(self, params: Iterable[Any], threshold: Hyper = 1e-8,
                 gamma: Hyper = 1e-4) -> None:
        super().__init__(params, {"threshold": threshold, "gamma": gamma})

    def _signal(self, state: dict[str, torch.Tensor], grad: torch.Tensor,
                group: dict[str, Any], hyper: dict[str, float]) -> torch.Tensor:
        return _moving_average(state, "m", grad, hyper["gamma"])


class Bop2ndOrder(_FlipOptimizer):
    """Bop2ndOrder (Suarez-Ramirez et al., CVPRW 2021): Bop flipping on ``m`` normalised by
    ``sqrt(v)``.

    Args:
        params: binary weights (or parameter groups).
        threshold: ``tau``, compared with ``w * r``.
        gamma: rate of the gradient's moving average ``m``.
        sigma: rate of the squared gradient's moving average ``v``.
        bias_correction: ``False`` flips on ``r = m / (sqrt(v) + 1e-10)``; ``True`` on
            ``r = (m / gamma) / (sqrt(v / sigma) + 1e-10)`` (then gamma and sigma must be > 0).

    ``threshold``, ``gamma`` and ``sigma`` may be numbers or schedules ``step -> value``.
    """

    schedulable = ("threshold", "gamma", "sigma")

    def __init__(self, params: Iterable[Any], threshold: Hyper = 1e-6, gamma: Hyper = 1e-6,
                 sigma: Hyper = 1e-2, bias_correction: bool = False) -> None:
        super().__init__(params, {"threshold": threshold, "gamma": gamma, "sigma": sigma,
                                  "bias_correction": bias_correction})

    def _hyper(self, group: dict[str, Any]) -> dict[str, float]:
        values = super()._hyper(group)
        if not isinstance(group["bias_correction"], bool):
            raise BnasError(f"Bop2ndOrder: bias_correction must be true or false, "
                            f"got {group['bias_correction']!r}")
        if group["bias_correction"] and (values["gamma"] == 0 or values["sigma"] == 0):
            raise BnasError(f"Bop2ndOrder: gamma and sigma must be > 0 with bias_correction, got "
                            f"gamma={values['gamma']:g}, sigma={values['sigma']:g} at step "
                            f"{group['step']}")
        return values

    def _signal(self, state: dict[str, torch.Tensor], grad: torch.Tensor,
                group: dict[str, Any], hyper: dict[str, float]) -> torch.Tensor:
        m = _moving_average(state, "m", grad, hyper["gamma"])
        v = _moving_average(state, "v", grad * grad, hyper["sigma"])
        if group["bias_correction"]:
            return (m / hyper["gamma"]) / ((v / hyper["sigma"]).sqrt() + 1e-10)
        return m / (v.sqrt() + 1e-10)


def _trainable(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, nn.Parameter]]:
    """``(qualified name, owning module, local name, parameter)`` for each trainable parameter,
    once each (a shared parameter is reported with the first module that holds it)."""
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                yield (f"{prefix}.{name}" if prefix else name), module, name, param


class _MergedState(Mapping):
    """Read-only view of several optimizers' ``state``, without creating entries on lookup
    (their ``state`` is a ``defaultdict``)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self._optimizers = optimizers

    def __getitem__(self, param: torch.Tensor) -> Any:
        for optimizer in self._optimizers:
            if param in optimizer.state:
                return optimizer.state[param]
        raise KeyError(param)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for optimizer in self._optimizers:
            yield from optimizer.state

    def __len__(self) -> int:
        return sum(len(optimizer.state) for optimizer in self._optimizers)


def _describe(predicate: Predicate) -> str:
    return getattr(predicate, "__name__", repr(predicate))


class CaseOptimizer(torch.optim.Optimizer):
    """Several optimizers that look like one: each trainable parameter of ``model`` goes to
    the optimizer of the one case whose predicate claims it (after larq's ``CaseOptimizer``).

    >>> opt = CaseOptimizer(model, (is_binary_weight, lambda ps: Bop(ps)),
    ...                     default=lambda ps: torch.optim.Adam(ps, lr=0.01))

    ``cases`` are ``(predicate, factory)`` pairs; ``predicate(module, param_name, param)`` is
    asked for every trainable parameter, and ``factory(params)`` builds an optimizer over exactly
    the parameters claimed. ``default`` (a factory) takes the parameters no predicate claims.
    A parameter claimed by two predicates, or a case that claims nothing, is a
    :class:`BnasError`; unclaimed parameters without a ``default`` are left untrained, with a
    warning.

    A training loop uses it like any optimizer: :meth:`zero_grad`, :meth:`step`,
    :meth:`state_dict` / :meth:`load_state_dict` (of every sub-optimizer), ``state``, and
    ``param_groups``, the sub-optimizers' own group dicts one after the other, so a change to one
    is a change to the sub-optimizer. Learning-rate schedulers: a ``torch.optim.lr_scheduler``
    built on the CaseOptimizer drives every group's ``lr``; groups of optimizers that have no
    learning rate (Bop) get an ``lr`` entry of 0.0 that nothing reads, so the scheduler changes
    the ordinary optimizer only, while Bop's ``gamma`` and ``threshold`` follow their own
    schedules. To schedule one sub-optimizer alone, build the scheduler on
    ``case.optimizers[i]``. ``optimizers`` lists the sub-optimizers (the default first, then the
    cases' in order) and ``param_names`` the qualified parameter names each one trains.
    """

    def __init__(self, model: nn.Module, *cases: tuple[Predicate, Factory],
                 default: Factory | None = None) -> None:
        if not cases and default is None:
            raise BnasError("CaseOptimizer needs at least one case or a default optimizer")
        for case in cases:
            if not (isinstance(case, tuple) and len(case) == 2 and all(map(callable, case))):
                raise BnasError(f"CaseOptimizer cases are (predicate, factory) pairs, got {case!r}")
        # Slot 0 is the default optimizer, first so that ``param_groups[0]`` (whose ``lr``
        # training loops tend to log) is the ordinary optimizer's; slot i + 1 is case i.
        factories = [default] + [factory for _, factory in cases]
        claimed: list[list[tuple[str, nn.Parameter]]] = [[] for _ in factories]
        for qualified, module, name, param in _trainable(model):
            owners = [i for i, (predicate, _) in enumerate(cases, 1)
                      if predicate(module, name, param)]
            if len(owners) > 1:
                raise BnasError(f"parameter '{qualified}' is claimed by more than one case: "
                                f"{', '.join(_describe(cases[i - 1][0]) for i in owners)}")
            claimed[owners[0] if owners else 0].append((qualified, param))
        for (predicate, _), mine in zip(cases, claimed[1:]):
            if not mine:
                raise BnasError(f"the optimizer of case '{_describe(predicate)}' claims no "
                                f"parameter of the model")
        if default is None and claimed[0]:
            warnings.warn(f"CaseOptimizer: no optimizer trains {len(claimed[0])} parameter(s): "
                          f"{', '.join(n for n, _ in claimed[0][:5])}"
                          f"{', ...' if len(claimed[0]) > 5 else ''}", stacklevel=2)
        optimizers, param_names = [], []
        for factory, mine in zip(factories, claimed):
            if factory is None or not mine:
                continue
            optimizer = factory([p for _, p in mine])
            self._check_holds(optimizer, mine)
            for group in optimizer.param_groups:
                group.setdefault("lr", 0.0)
            optimizers.append(optimizer)
            param_names.append([n for n, _ in mine])
        super().__init__([g for o in optimizers for g in o.param_groups], {})
        self.optimizers: list[torch.optim.Optimizer] = optimizers
        self.param_names: list[list[str]] = param_names
        self.state = _MergedState(optimizers)  # type: ignore[assignment]
        self._sync()

    @staticmethod
    def _check_holds(optimizer: Any, mine: list[tuple[str, nn.Parameter]]) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise BnasError(f"a CaseOptimizer factory returned {type(optimizer).__name__}, "
                            f"not a torch.optim.Optimizer")
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if held != {id(p) for _, p in mine}:
            raise BnasError(f"the {type(optimizer).__name__} built for "
                            f"{', '.join(n for n, _ in mine[:3])}... does not hold exactly the "
                            f"parameters it was given")

    def _sync(self) -> None:
        """Point ``param_groups`` at the sub-optimizers' current group dicts (loading a state
        replaces them)."""
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # Called by torch's constructor with the sub-optimizers' groups; afterwards a new group
        # would belong to no sub-optimizer and never be stepped.
        if hasattr(self, "optimizers"):
            raise BnasError("add parameter groups to one of CaseOptimizer.optimizers")
        super().add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate ``closure`` (if any) once, then step every sub-optimizer."""
        loss = _evaluate(closure)
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers],
                "param_names": [list(names) for names in self.param_names]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("param_names")
        if saved != self.param_names:
            raise BnasError("this optimizer state was saved for a different routing of the "
                            "model's parameters")
        for optimizer, state in zip(self.optimizers, state_dict["optimizers"]):
            optimizer.load_state_dict(state)
        self._sync()

    def __repr__(self) -> str:
        parts = [f"{type(o).__name__} ({len(n)} parameters)"
                 for o, n in zip(self.optimizers, self.param_names)]
        return f"CaseOptimizer({', '.join(parts)})"
