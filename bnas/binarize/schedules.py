"""Schedules for the Bop optimizers' hyper-parameters: callables ``step -> value``.

:class:`~bnas.binarize.optim.Bop` evaluates a schedule at the number of steps it has taken,
before its step counter moves: step 0 uses ``schedule(0)``, as larq's Bop does with Keras
learning-rate schedules. The schedules are small frozen dataclasses, so an optimizer
``state_dict`` that holds one can be saved with ``torch.save`` (a lambda cannot).

Configurations give schedules in epochs (:func:`from_spec`), which become steps once the number
of steps per epoch is known:

- a number: a constant;
- ``{"schedule": "step", "start": 1e-4, "factor": 0.1, "every": 100}``: x0.1 every 100 epochs
  (Bop on CIFAR-10, Helwegen et al., NeurIPS 2019, Sec. 5.2);
- ``{"schedule": "linear", "start": 1e-4, "end": 1e-6}``: linear over the whole run (Bop on
  ImageNet; Bop2ndOrder, Suarez-Ramirez et al., CVPR Workshops 2021).

Every value a schedule takes is a finite, non-negative number, as Bop's hyper-parameters must be.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from ..errors import BnasError
from ..registry import Registry

Schedule = Callable[[int], float]
#: A hyper-parameter value: a constant or a schedule over optimizer steps.
Hyper = Union[float, Schedule]


def _non_negative(owner: str, key: str, value: Any) -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value < 0):
        raise BnasError(f"{owner}: {key} must be a finite number >= 0, got {value!r}")


def _positive_int(owner: str, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BnasError(f"{owner}: {key} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class Constant:
    """``value`` at every step."""

    value: float

    def __post_init__(self) -> None:
        _non_negative("constant schedule", "value", self.value)

    def __call__(self, step: int) -> float:
        return float(self.value)


@dataclass(frozen=True)
class StepDecay:
    """``start * factor ** (step // every)`` (Keras' ``ExponentialDecay`` with ``staircase``)."""

    start: float
    factor: float
    every: int

    def __post_init__(self) -> None:
        _non_negative("step schedule", "start", self.start)
        _non_negative("step schedule", "factor", self.factor)
        _positive_int("step schedule", "every", self.every)

    def __call__(self, step: int) -> float:
        return float(self.start * self.factor ** (step // self.every))


@dataclass(frozen=True)
class Linear:
    """From ``start`` at step 0 to ``end`` at step ``steps``, then ``end`` (Keras'
    ``PolynomialDecay`` with ``power=1``)."""

    start: float
    end: float
    steps: int

    def __post_init__(self) -> None:
        _non_negative("linear schedule", "start", self.start)
        _non_negative("linear schedule", "end", self.end)
        _positive_int("linear schedule", "steps", self.steps)

    def __call__(self, step: int) -> float:
        return float(self.start + (self.end - self.start) * min(step, self.steps) / self.steps)


# Builders from a configuration's epoch-based description to a step-based schedule; each
# takes the steps per epoch, the epochs of the run, then the description's keys.
SPECS: Registry[Callable[..., Schedule]] = Registry("hyper-parameter schedule")


@SPECS.register("constant")
def _constant(steps_per_epoch: int, epochs: int, value: float) -> Schedule:
    return Constant(value)


@SPECS.register("step")
def _step(steps_per_epoch: int, epochs: int, start: float, factor: float,
          every: int) -> Schedule:
    _positive_int("step schedule", "every", every)
    return StepDecay(start, factor, every * steps_per_epoch)


@SPECS.register("linear")
def _linear(steps_per_epoch: int, epochs: int, start: float, end: float) -> Schedule:
    return Linear(start, end, epochs * steps_per_epoch)


def from_spec(spec: Any, steps_per_epoch: int | None, epochs: int | None) -> Hyper:
    """The value or schedule a configuration describes (see the module docstring).

    Numbers come back as floats; a schedule description needs ``steps_per_epoch`` and
    ``epochs`` (the run's length), and an unknown kind or key is a :class:`BnasError`.
    """
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return float(spec)
    if not isinstance(spec, dict) or "schedule" not in spec:
        raise BnasError(f"expected a number or a schedule such as "
                        f"{{'schedule': 'linear', 'start': 1e-4, 'end': 1e-6}}, got {spec!r}")
    builder = SPECS.get(spec["schedule"])
    keys = {k: v for k, v in spec.items() if k != "schedule"}
    signature = inspect.signature(builder)
    try:
        signature.bind(steps_per_epoch, epochs, **keys)
    except TypeError:
        wanted = list(signature.parameters)[2:]
        raise BnasError(f"the {spec['schedule']!r} schedule takes {', '.join(wanted)}; "
                        f"got {', '.join(sorted(keys)) or 'nothing'}") from None
    if steps_per_epoch is None or epochs is None:
        raise BnasError(f"the {spec['schedule']!r} schedule needs the number of epochs and "
                        f"of steps per epoch")
    _positive_int("schedule", "steps per epoch", steps_per_epoch)
    _positive_int("schedule", "epochs", epochs)
    return builder(steps_per_epoch, epochs, **keys)
