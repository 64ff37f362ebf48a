"""Learning-rate schedules against independent formulas and PyTorch's own schedulers."""
from __future__ import annotations

import math

import pytest
import torch

from bnas.binarize import Bop, CaseOptimizer
from bnas.binarize.optim import is_binary_weight
from bnas.errors import BnasError
from bnas.run.schedules import LrScheduler, build_schedule


def _one_cycle_by_hand(num_steps: int, lo: float, hi: float, m_lo: float, m_hi: float,
                       annihilation: float = 0.1, reduce: float = 0.01):
    """BNAS's one-cycle policy written out step by step, momentum carried over in the tail."""
    cycle = int(num_steps * (1 - annihilation))
    half = cycle // 2
    lrs, moms, momentum = [], [], None
    for step in range(num_steps):
        if step <= half:
            lr = lo + (hi - lo) * step / half
            momentum = m_hi - (m_hi - m_lo) * step / half
        elif step <= cycle:
            frac = (step - half) / (cycle - half)
            lr = hi - (hi - lo) * frac
            momentum = m_lo + (m_hi - m_lo) * frac
        else:
            frac = (step - cycle) / (num_steps - cycle)
            lr = lo - (lo - lo * reduce) * frac
        lrs.append(lr)
        moms.append(momentum)
    return lrs, moms


def _values(schedule, epochs: int, steps: int):
    return [schedule.factor(e, b) for e in range(epochs) for b in range(steps)]


def test_onecycle_matches_the_bnas_policy():
    epochs, steps = 7, 13
    schedule = build_schedule("onecycle", epochs, steps)
    lrs, moms = _one_cycle_by_hand(epochs * steps, 0.05 * 0.05, 0.05, 0.85, 0.95)
    got = [0.05 * f for f in _values(schedule, epochs, steps)]
    got_m = [schedule.momentum(e, b) for e in range(epochs) for b in range(steps)]
    assert got == pytest.approx(lrs, rel=1e-12, abs=1e-15)
    assert got_m == pytest.approx(moms, rel=1e-12)
    assert max(got) == pytest.approx(0.05) and got[0] == pytest.approx(0.0025)
    assert got[-1] < 0.0025 and min(got_m) == pytest.approx(0.85)


def test_cosine_restarts_matches_torch_per_iteration():
    epochs, steps, period = 7, 5, 3
    schedule = build_schedule("cosine_restarts", epochs, steps, args={"period": period})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.05)
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=period, eta_min=0.0)
    expected = []
    for e in range(epochs):
        for b in range(steps):
            ref.step(e + b / steps)
            expected.append(opt.param_groups[0]["lr"])
    got = [0.05 * f for f in _values(schedule, epochs, steps)]
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_warmup_cosine_matches_the_recu_training_loop():
    """ReCU's loop: lr * (e+1)/5 for e < 5, CosineAnnealingLR(T_max=E-4) stepped after each
    epoch from epoch 4 on."""
    epochs, lr = 12, 0.1
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "initial_lr": lr}], lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs - 4, eta_min=0, last_epoch=-1)
    expected = []
    for epoch in range(epochs):
        if epoch < 5:
            for group in opt.param_groups:
                group["lr"] = lr * (epoch + 1) / 5
        expected.append(opt.param_groups[0]["lr"])
        if epoch >= 4:
            cosine.step()
    schedule = build_schedule("cosine", epochs, 3, warmup_epochs=5)
    got = [lr * schedule.factor(e, b) for e in range(epochs) for b in (0, 2)]
    assert got[::2] == pytest.approx(expected, rel=1e-9)
    assert got[1::2] == got[::2]  # per-epoch schedule


def test_cosine_without_warmup_is_per_epoch_cosine_annealing():
    schedule = build_schedule("cosine", 10, 4)
    assert [schedule.factor(e, 3) for e in range(10)] == pytest.approx(
        [(1 + math.cos(math.pi * e / 10)) / 2 for e in range(10)])


def test_linear_step_and_constant():
    linear = build_schedule("linear", 4, 5, args={"end": 0.002})
    assert [linear.factor(e, b) for e in range(4) for b in range(5)] == pytest.approx(
        [1 + (0.002 - 1) * s / 20 for s in range(20)])
    step = build_schedule("step", 10, 2, args={"milestones": [3, 6], "factor": 0.5})
    assert [step.factor(e, 0) for e in range(10)] == [1, 1, 1, .5, .5, .5, .25, .25, .25, .25]
    assert build_schedule("constant", 3, 2).factor(2, 1) == 1.0


def test_schedule_settings_are_checked():
    with pytest.raises(BnasError, match="takes period, final; got T_0"):
        build_schedule("cosine_restarts", 10, 2, args={"T_0": 5})
    with pytest.raises(BnasError, match="unknown learning-rate schedule 'cosin'"):
        build_schedule("cosin", 10, 2)
    short = build_schedule("cosine", 3, 2, warmup_epochs=5)  # warms up for 2 of 3 epochs
    assert [short.factor(e, 0) for e in range(3)] == pytest.approx([0.5, 1.0, 0.5])


def test_scheduler_scales_every_group_and_leaves_bop_at_zero():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    model[0].weight_precision = 1
    opt = CaseOptimizer(model, (is_binary_weight, lambda ps: Bop(ps)),
                        default=lambda ps: torch.optim.SGD(ps, lr=0.2, momentum=0.9))
    scheduler = LrScheduler(opt, build_schedule("onecycle", 2, 10))
    scheduler.step(0, 0)
    lrs = [g["lr"] for g in opt.param_groups]
    assert sorted(lrs) == pytest.approx([0.0, 0.2 * 0.05])
    sgd = next(o for o in opt.optimizers if isinstance(o, torch.optim.SGD)).param_groups[0]
    assert sgd["momentum"] == pytest.approx(0.95) and sgd["initial_lr"] == 0.2
