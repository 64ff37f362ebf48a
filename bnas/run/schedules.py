"""Learning-rate schedules of the recipes, as pure functions of the training position.

A schedule maps ``(epoch, batch)`` (0-based; ``batch`` within the epoch) to a factor of each
parameter group's base learning rate (``initial_lr``), and optionally to a momentum. Being a
function of the position only, it needs no state of its own: a resumed run lands on exactly the
values an uninterrupted one would use.

Warm-up (``warmup_epochs = W > 0``, the RBNN / ReCU / SiMaN recipes): ``lr * (e + 1) / W`` for
``e < W``; then the schedule runs over the remaining epochs counted from ``W - 1``, as in those
papers' scripts (their cosine starts at the last warm-up epoch, so epoch ``W`` is already one
cosine step below the peak). A run of ``E <= W`` epochs warms up for ``E - 1`` of them.
"""
from __future__ import annotations

import inspect
import math
from typing import Any

import torch

from ..errors import BnasError
from ..registry import Registry


class Schedule:
    """A learning-rate factor (and optionally a momentum) at each training position."""

    def __init__(self, epochs: int, steps_per_epoch: int) -> None:
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch

    def step_index(self, epoch: int, batch: int) -> int:
        return epoch * self.steps_per_epoch + batch

    def factor(self, epoch: int, batch: int) -> float:
        raise NotImplementedError

    def momentum(self, epoch: int, batch: int) -> float | None:
        """The momentum at this position, or None to leave it alone."""
        return None


SCHEDULES: Registry[type[Schedule]] = Registry("learning-rate schedule")


@SCHEDULES.register("constant")
class Constant(Schedule):
    """The base learning rate throughout."""

    def factor(self, epoch: int, batch: int) -> float:
        return 1.0


@SCHEDULES.register("cosine")
class Cosine(Schedule):
    """Per epoch: ``final + (1 - final) * (1 + cos(pi * e / E)) / 2`` (PyTorch's
    ``CosineAnnealingLR`` stepped once per epoch, ``eta_min = final * lr``)."""

    def __init__(self, epochs: int, steps_per_epoch: int, final: float = 0.0) -> None:
        super().__init__(epochs, steps_per_epoch)
        self.final = final

    def factor(self, epoch: int, batch: int) -> float:
        return self.final + (1.0 - self.final) * (1.0 + math.cos(math.pi * epoch / self.epochs)) / 2


@SCHEDULES.register("linear")
class Linear(Schedule):
    """Per iteration, linearly from the base rate to ``end`` times it at the last step
    (Bop's ImageNet recipe: Adam 2.5e-3 -> 5e-6 is ``end = 0.002``)."""

    def __init__(self, epochs: int, steps_per_epoch: int, end: float = 0.0) -> None:
        super().__init__(epochs, steps_per_epoch)
        self.end = end

    def factor(self, epoch: int, batch: int) -> float:
        total = self.epochs * self.steps_per_epoch
        return 1.0 + (self.end - 1.0) * min(self.step_index(epoch, batch) / total, 1.0)


@SCHEDULES.register("step")
class Step(Schedule):
    """Per epoch: multiplied by ``factor`` at each epoch in ``milestones`` (``MultiStepLR``)."""

    def __init__(self, epochs: int, steps_per_epoch: int, milestones: list[int] = (),
                 factor: float = 0.1) -> None:
        super().__init__(epochs, steps_per_epoch)
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = factor

    def factor(self, epoch: int, batch: int) -> float:
        return self.gamma ** sum(epoch >= m for m in self.milestones)


@SCHEDULES.register("onecycle")
class OneCycle(Schedule):
    """BNAS's one-cycle policy (after Smith & Topin, "Super-Convergence", 2017), per iteration.

    Over ``n = epochs * steps`` steps, with ``c = int(n * (1 - annihilation))`` and ``h = c // 2``:
    the rate rises linearly from ``start_factor * lr`` to ``lr`` at step ``h``, falls back to
    ``start_factor * lr`` at step ``c``, then decays linearly to ``final_factor`` times that at
    step ``n``. Momentum moves against it, ``max -> min`` at step ``h`` and back to ``max`` at
    ``c``, where it stays. (PyTorch's ``OneCycleLR`` splits the phases differently.)
    """

    def __init__(self, epochs: int, steps_per_epoch: int, start_factor: float = 0.05,
                 annihilation: float = 0.1, final_factor: float = 0.01,
                 momentum_range: tuple[float, float] = (0.85, 0.95)) -> None:
        super().__init__(epochs, steps_per_epoch)
        if not 0.0 <= annihilation < 1.0:
            raise BnasError(f"onecycle: annihilation must lie in [0, 1), got {annihilation}")
        self.low = start_factor
        self.final = start_factor * final_factor
        self.total = epochs * steps_per_epoch
        self.cycle = int(self.total * (1.0 - annihilation))
        self.half = self.cycle // 2
        self.momentum_low, self.momentum_high = (float(m) for m in momentum_range)

    def _phase(self, step: int) -> tuple[str, float]:
        if step <= self.half:
            return "up", step / max(self.half, 1)
        if step <= self.cycle:
            return "down", (step - self.half) / max(self.cycle - self.half, 1)
        return "tail", min((step - self.cycle) / max(self.total - self.cycle, 1), 1.0)

    def factor(self, epoch: int, batch: int) -> float:
        phase, s = self._phase(self.step_index(epoch, batch))
        if phase == "up":
            return self.low + (1.0 - self.low) * s
        if phase == "down":
            return 1.0 - (1.0 - self.low) * s
        return self.low - (self.low - self.final) * s

    def momentum(self, epoch: int, batch: int) -> float:
        phase, s = self._phase(self.step_index(epoch, batch))
        span = self.momentum_high - self.momentum_low
        if phase == "up":
            return self.momentum_high - span * s
        if phase == "down":
            return self.momentum_low + span * s
        return self.momentum_high


@SCHEDULES.register("cosine_restarts")
class CosineRestarts(Schedule):
    """Cosine annealing with warm restarts every ``period`` epochs (SGDR, Loshchilov & Hutter,
    ICLR 2017), evaluated at the fractional epoch ``e + b / steps`` before every iteration, as
    BNAS's ImageNet script steps ``CosineAnnealingWarmRestarts(T_0=50)``."""

    def __init__(self, epochs: int, steps_per_epoch: int, period: float = 50,
                 final: float = 0.0) -> None:
        super().__init__(epochs, steps_per_epoch)
        if not period > 0:
            raise BnasError(f"cosine_restarts: period must be > 0 epochs, got {period}")
        self.period = period
        self.final = final

    def factor(self, epoch: int, batch: int) -> float:
        t = (epoch + batch / self.steps_per_epoch) % self.period
        return self.final + (1.0 - self.final) * (1.0 + math.cos(math.pi * t / self.period)) / 2


class WarmUp(Schedule):
    """``(e + 1) / warmup`` for the first ``warmup`` epochs, then ``inner`` over the rest of the
    run counted from epoch ``warmup - 1`` (see the module docstring)."""

    def __init__(self, inner_class: type[Schedule], epochs: int, steps_per_epoch: int,
                 warmup: int, **args: Any) -> None:
        super().__init__(epochs, steps_per_epoch)
        self.warmup = warmup
        self.offset = warmup - 1
        self.inner = inner_class(epochs - self.offset, steps_per_epoch, **args)

    def factor(self, epoch: int, batch: int) -> float:
        if epoch < self.warmup:
            return (epoch + 1) / self.warmup
        return self.inner.factor(epoch - self.offset, batch)

    def momentum(self, epoch: int, batch: int) -> float | None:
        return self.inner.momentum(max(epoch - self.offset, 0), batch)


def build_schedule(name: str, epochs: int, steps_per_epoch: int, warmup_epochs: int = 0,
                   args: dict[str, Any] | None = None) -> Schedule:
    """The schedule ``name`` with ``args`` (its keyword settings), over ``epochs``."""
    cls = SCHEDULES.get(name)
    args = dict(args or {})
    wanted = [p for p in inspect.signature(cls.__init__).parameters][3:]
    bad = sorted(set(args) - set(wanted))
    if bad:
        raise BnasError(f"the {name} schedule takes {', '.join(wanted) or 'no settings'}; "
                        f"got {', '.join(bad)}")
    warmup = min(warmup_epochs, epochs - 1)  # a short run still reaches the peak rate
    if warmup > 0:
        return WarmUp(cls, epochs, steps_per_epoch, warmup, **args)
    return cls(epochs, steps_per_epoch, **args)


class LrScheduler:
    """Applies a :class:`Schedule` to an optimizer's parameter groups before each iteration.

    Each group's base rate is its ``initial_lr`` (set from ``lr`` when first seen, and saved
    with the optimizer's state). Groups of optimizers without a learning rate (Bop's) hold
    ``lr = 0`` and stay there.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule) -> None:
        self.optimizer = optimizer
        self.schedule = schedule
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.position = (0, 0)

    def step(self, epoch: int, batch: int) -> None:
        """Set the rates (and momentum) for iteration ``batch`` of ``epoch``."""
        factor = self.schedule.factor(epoch, batch)
        momentum = self.schedule.momentum(epoch, batch)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
            if momentum is not None and "momentum" in group:
                group["momentum"] = momentum
        self.position = (epoch, batch)

    def lr(self) -> float:
        """The first group's current rate (for logs)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """The position last applied (the values follow from it and the configuration)."""
        return {"epoch": self.position[0], "batch": self.position[1]}

