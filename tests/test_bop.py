"""Bop, Bop2ndOrder, CaseOptimizer and the "bop" / "bop2" schemes, checked against hand-computed
updates (numpy, float64) of m_t = m + gamma (g - m), v_t = v + sigma (g^2 - v) and the flip rule
"flip iff w * signal > tau"."""
from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bnas
from bnas import binarize
from bnas.binarize import Bop, Bop2ndOrder, CaseOptimizer, OptimizerSettings, RunSpec
from bnas.binarize.bop import BopConv2d
from bnas.binarize.optim import is_binary_weight
from bnas.binarize.schedules import Constant, Linear, StepDecay, from_spec
from bnas.errors import BnasError


def _param(values) -> nn.Parameter:
    return nn.Parameter(torch.tensor(values, dtype=torch.float32))


def _step(opt: torch.optim.Optimizer, w: nn.Parameter, grad) -> None:
    w.grad = torch.as_tensor(grad, dtype=torch.float32)
    opt.step()


def _s(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0, -1.0)


# --------------------------------------------------------------------------- Bop


def test_moving_average_matches_hand_computation():
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(4, 6)).astype(np.float32)
    gamma = 0.3
    w = _param(np.ones(6))
    opt = Bop([w], threshold=1e9, gamma=gamma)  # no flips: only m is tested
    m = np.zeros(6)
    for g in grads:
        _step(opt, w, g)
        m = m + gamma * (g.astype(np.float64) - m)
        np.testing.assert_allclose(opt.state[w]["m"].numpy(), m, rtol=1e-6, atol=1e-7)
    # m_0 = 0: the first step's average is gamma * g, not g
    w2 = _param(np.ones(6))
    opt2 = Bop([w2], gamma=gamma)
    _step(opt2, w2, grads[0])
    np.testing.assert_allclose(opt2.state[w2]["m"].numpy(), gamma * grads[0], rtol=1e-6)


def test_flip_exactly_when_w_m_exceeds_threshold():
    # gamma = 0.5, tau = 0.25: m = g / 2 after one step; all values exact in float32
    w = _param([1.0, -1.0, 1.0, -1.0, -1.0, 1.0])
    grads = [0.5, -0.5, 0.75, 0.25, -1.0, -2.0]
    opt = Bop([w], threshold=0.25, gamma=0.5)
    _step(opt, w, grads)
    # w * m = [0.25 (tie), 0.25 (tie), 0.375, -0.125, 0.5, -1.0]
    assert w.tolist() == [1.0, -1.0, -1.0, -1.0, 1.0, 1.0]
    assert opt.last_flip_ratio == pytest.approx(2 / 6)


def test_zero_negative_zero_and_real_weights_are_binarised_on_the_first_step():
    w = _param([0.0, -0.0, 0.3, -0.7, 2.0, -1e-30, 0.3])
    opt = Bop([w], threshold=1e-8, gamma=0.5)
    _step(opt, w, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])  # only the last one flips (0.3*0.5 > tau)
    assert w.tolist() == [1.0, 1.0, 1.0, -1.0, 1.0, -1.0, -1.0]
    assert not torch.signbit(w[:2]).any()  # -0.0 became +1, not -1 or -0.0


def test_hyper_parameters_use_the_schedule_value_before_the_step():
    seen = []

    def gamma(step: int) -> float:
        seen.append(step)
        return StepDecay(0.5, 0.5, 1)(step)  # 0.5, 0.25, 0.125, ...

    w = _param([1.0])
    opt = Bop([w], threshold=1e9, gamma=gamma)
    seen.clear()  # the constructor validated gamma(0)
    for _ in range(3):
        _step(opt, w, [1.0])
    assert seen == [0, 1, 2]
    m = 0.0
    for g in (0.5, 0.25, 0.125):
        m += g * (1.0 - m)
    assert opt.state[w]["m"].item() == pytest.approx(m, rel=1e-7)
    assert opt.param_groups[0]["step"] == 3

    # a threshold schedule: no flip while tau(t) is high, a flip at the first step where it is low
    w = _param([1.0])
    opt = Bop([w], threshold=lambda t: 1.0 if t < 2 else 0.0, gamma=0.5)
    flips = []
    for _ in range(3):
        _step(opt, w, [1.0])
        flips.append(w.item())
    assert flips == [1.0, 1.0, -1.0]


def test_schedules_by_hand():
    assert [StepDecay(1e-4, 0.1, 3)(t) for t in (0, 2, 3, 7)] == pytest.approx(
        [1e-4, 1e-4, 1e-5, 1e-6])
    lin = Linear(1e-2, 1e-5, 4)
    assert [lin(t) for t in (0, 1, 4, 10)] == pytest.approx(
        [1e-2, 1e-2 + (1e-5 - 1e-2) / 4, 1e-5, 1e-5])
    assert Constant(3.0)(123) == 3.0
    assert from_spec(2, None, None) == 2.0
    assert from_spec({"schedule": "step", "start": 1e-4, "factor": 0.1, "every": 100},
                     steps_per_epoch=1000, epochs=500) == StepDecay(1e-4, 0.1, 100_000)
    assert from_spec({"schedule": "linear", "start": 1e-4, "end": 1e-6}, 10, 150) == \
        Linear(1e-4, 1e-6, 1500)
    assert from_spec({"schedule": "constant", "value": 0.5}, 1, 1) == Constant(0.5)
    for spec, message in [({"schedule": "linear", "start": 1.0}, "takes start, end"),
                          ({"schedule": "cosine"}, "unknown hyper-parameter schedule"),
                          ("1e-4", "expected a number or a schedule"),
                          ({"schedule": "linear", "start": -1.0, "end": 0.0}, ">= 0"),
                          ({"schedule": "step", "start": 1.0, "factor": 0.1, "every": 0},
                           "positive integer")]:
        with pytest.raises(BnasError, match=message):
            from_spec(spec, 10, 10)
    with pytest.raises(BnasError, match="needs the number of epochs"):
        from_spec({"schedule": "linear", "start": 1.0, "end": 0.0}, None, None)


@pytest.mark.parametrize("kwargs,message", [
    ({"gamma": -1e-4}, "gamma must be a finite number >= 0"),
    ({"threshold": -1.0}, "threshold must be"),
    ({"gamma": float("nan")}, "gamma must be"),
    ({"gamma": lambda t: -1.0}, "at step 0"),
])
def test_bop_rejects_negative_hyper_parameters(kwargs, message):
    with pytest.raises(BnasError, match=message):
        Bop([_param([1.0])], **kwargs)


def test_a_schedule_going_negative_fails_at_that_step():
    w = _param([1.0])
    opt = Bop([w], gamma=lambda t: 1e-4 if t == 0 else -1e-4)
    _step(opt, w, [1.0])
    with pytest.raises(BnasError, match="at step 1"):
        _step(opt, w, [1.0])


# --------------------------------------------------------------------- Bop2ndOrder

GRADS = np.array([[0.3, -0.2, 0.05, -0.6, 0.01],
                  [0.1, -0.4, 0.02, 0.3, -0.02]], dtype=np.float32)


def _hand_ratio(gamma: float, sigma: float, unbiased: bool, grads=GRADS) -> np.ndarray:
    m = np.zeros(grads.shape[1])
    v = np.zeros(grads.shape[1])
    for g in grads.astype(np.float64):
        m = m + gamma * (g - m)
        v = v + sigma * (g * g - v)
    if unbiased:
        return (m / gamma) / (np.sqrt(v / sigma) + 1e-10)
    return m / (np.sqrt(v) + 1e-10)


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("scale", [1.0, 1e-9])  # tiny gradients: the 1e-10 guard matters
def test_bop2ndorder_flips_on_the_hand_computed_ratio(unbiased, scale):
    gamma, sigma = 0.1, 0.04
    grads = (GRADS * scale).astype(np.float32)
    w0 = np.array([1.0, 1.0, 1.0, -1.0, 1.0])
    r = _hand_ratio(gamma, sigma, unbiased, grads)
    wr = w0 * r
    for i in range(len(w0)):
        for scale, flips in ((1 - 1e-4, True), (1 + 1e-4, False)):
            tau = abs(wr[i]) * scale if wr[i] > 0 else 0.0
            w = _param(w0)
            # no flip at step 0 (tau huge), the tested tau at step 1
            opt = Bop2ndOrder([w], threshold=lambda t, tau=tau: 1e9 if t == 0 else tau,
                              gamma=gamma, sigma=sigma, bias_correction=unbiased)
            for g in grads:
                _step(opt, w, g)
            expected = np.where(wr > tau, -w0, w0)
            if wr[i] > 0:
                assert (w.detach().numpy()[i] == -w0[i]) == flips
            np.testing.assert_array_equal(w.detach().numpy(), expected)
    m = opt.state[w]["m"].numpy()
    v = opt.state[w]["v"].numpy()
    g64 = grads.astype(np.float64)
    m_hand = gamma * (1 - gamma) * g64[0] + gamma * g64[1]
    v_hand = sigma * (1 - sigma) * g64[0] ** 2 + sigma * g64[1] ** 2
    np.testing.assert_allclose(m, m_hand, rtol=1e-6)
    np.testing.assert_allclose(v, v_hand, rtol=1e-6)


def test_biased_and_unbiased_ratios_differ_by_the_documented_factor():
    gamma, sigma = 0.1, 0.04
    biased = _hand_ratio(gamma, sigma, False)
    unbiased = _hand_ratio(gamma, sigma, True)
    # (m / gamma) / sqrt(v / sigma) = (m / sqrt(v)) * sqrt(sigma) / gamma, up to the 1e-10
    np.testing.assert_allclose(unbiased, biased * np.sqrt(sigma) / gamma, rtol=1e-6)


def test_bop2ndorder_rejects_zero_rates_with_bias_correction():
    with pytest.raises(BnasError, match="must be > 0 with bias_correction"):
        Bop2ndOrder([_param([1.0])], gamma=0.0, bias_correction=True)
    with pytest.raises(BnasError, match="sigma must be a finite number >= 0"):
        Bop2ndOrder([_param([1.0])], sigma=-1.0)
    Bop2ndOrder([_param([1.0])], gamma=0.0)  # the biased ratio is defined with gamma = 0


@pytest.mark.parametrize("make", [
    lambda ps: Bop(ps, threshold=1e-3, gamma=StepDecay(0.2, 0.5, 2)),
    lambda ps: Bop2ndOrder(ps, threshold=Linear(1e-2, 1e-4, 5), gamma=0.2, sigma=0.1,
                           bias_correction=True),
])
def test_state_dict_round_trip_continues_identically(make):
    torch.manual_seed(1)
    grads = torch.randn(8, 20)
    w_a = nn.Parameter(torch.randn(20))
    opt_a = make([w_a])
    for g in grads[:4]:
        _step(opt_a, w_a, g)
    buffer = io.BytesIO()
    torch.save(opt_a.state_dict(), buffer)  # schedules are picklable
    buffer.seek(0)
    w_b = nn.Parameter(w_a.detach().clone())
    opt_b = make([w_b])
    opt_b.load_state_dict(torch.load(buffer, weights_only=False))
    for g in grads[4:]:
        _step(opt_a, w_a, g)
        _step(opt_b, w_b, g)
        assert torch.equal(w_a, w_b)
    for key in opt_a.state[w_a]:
        assert torch.equal(opt_a.state[w_a][key], opt_b.state[w_b][key])
    assert opt_b.param_groups[0]["step"] == 8


# -------------------------------------------------------------------- CaseOptimizer


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = BopConv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3)))


def _adam(params):
    return torch.optim.Adam(params, lr=0.01)


def test_case_optimizer_routes_each_parameter_once():
    net = _Net()
    opt = CaseOptimizer(net, (is_binary_weight, Bop), default=_adam)
    assert [type(o) for o in opt.optimizers] == [torch.optim.Adam, Bop]  # the default first
    assert opt.param_names == [["bn.weight", "bn.bias", "fc.weight", "fc.bias"], ["conv.weight"]]
    assert [g["params"] for g in opt.param_groups] == [g["params"] for o in opt.optimizers
                                                      for g in o.param_groups]
    assert opt.param_groups[0] is opt.optimizers[0].param_groups[0]
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[1]["lr"] == 0.0


def test_case_optimizer_routing_errors_and_warning():
    net = _Net()
    with pytest.raises(BnasError, match="'conv.weight' is claimed by more than one case"):
        CaseOptimizer(net, (is_binary_weight, Bop), (lambda m, n, p: n == "weight", _adam))
    with pytest.raises(BnasError, match="claims no parameter"):
        CaseOptimizer(net, (is_binary_weight, Bop), (lambda m, n, p: False, _adam), default=_adam)
    with pytest.raises(BnasError, match="does not hold exactly"):
        CaseOptimizer(net, (is_binary_weight, lambda ps: Bop(list(net.conv.parameters()) +
                                                             list(net.bn.parameters()))),
                      default=_adam)
    with pytest.warns(UserWarning, match=r"no optimizer trains 4 parameter\(s\): bn.weight"):
        opt = CaseOptimizer(net, (is_binary_weight, Bop))
    assert opt.param_names == [["conv.weight"]]
    with pytest.raises(BnasError, match="add parameter groups to one of"):
        opt.add_param_group({"params": [net.fc.weight]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.bn.requires_grad_(False)
        net.fc.requires_grad_(False)
        CaseOptimizer(net, (is_binary_weight, Bop))  # frozen parameters are not routed


def _train_steps(net, opt, batches):
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_case_optimizer_state_dict_and_lr_scheduler():
    torch.manual_seed(0)
    batches = [(torch.randn(4, 2, 5, 5), torch.randint(0, 2, (4,))) for _ in range(6)]
    net_a = _Net()
    net_b = copy.deepcopy(net_a)

    def make(net):
        return CaseOptimizer(net, (is_binary_weight, lambda ps: Bop(ps, threshold=1e-6,
                                                                    gamma=1e-2)), default=_adam)

    opt_a = make(net_a)
    sched = torch.optim.lr_scheduler.StepLR(opt_a, step_size=1, gamma=0.5)
    _train_steps(net_a, opt_a, batches[:3])
    sched.step()
    assert opt_a.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.005)
    assert "lr" not in opt_a.optimizers[1].defaults  # Bop's inert lr lives in its group only
    net_b.load_state_dict(net_a.state_dict())
    opt_b = make(net_b)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    assert opt_b.param_groups[0]["lr"] == pytest.approx(0.005)
    assert opt_b.param_groups[0] is opt_b.optimizers[0].param_groups[0]
    assert torch.equal(opt_b.state[net_b.conv.weight]["m"], opt_a.state[net_a.conv.weight]["m"])
    assert net_b.conv.weight not in opt_b.optimizers[0].state  # lookups create no entries
    assert len(opt_b.state) == 5 and set(opt_b.state) == set(net_b.parameters())
    assert _train_steps(net_a, opt_a, batches[3:]) == _train_steps(net_b, opt_b, batches[3:])
    for pa, pb in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(pa, pb)
    with pytest.raises(BnasError, match="different routing"), pytest.warns(UserWarning):
        CaseOptimizer(net_b, (is_binary_weight, Bop)).load_state_dict(opt_a.state_dict())


# ------------------------------------------------------------------- the schemes


def test_bop_conv_forward_is_binary_from_the_start():
    torch.manual_seed(0)
    conv = binarize.get("bop").conv(3, 4, 3, padding=1)
    assert type(conv) is BopConv2d and conv.weight_precision == 1
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = 0.0
        conv.weight[0, 0, 0, 1] = -0.0
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    y = conv(x)
    w = conv.weight.detach()
    w_bin = torch.where(w >= 0, 1.0, -1.0)
    assert w_bin[0, 0, 0, 0] == 1 and w_bin[0, 0, 0, 1] == 1
    assert torch.equal(conv.binary_weight(), w_bin)
    torch.testing.assert_close(y, F.conv2d(torch.sign(x.detach()), w_bin, padding=1))
    # the weight receives the gradient with respect to the binary weight, unchanged
    gy = torch.randn_like(y)
    y.backward(gy)
    wb = w_bin.clone().requires_grad_(True)
    xb = torch.sign(x.detach())
    F.conv2d(xb, wb, padding=1).backward(gy)
    torch.testing.assert_close(conv.weight.grad, wb.grad)
    # inputs: straight-through where |x| < 1
    xs = xb.clone().requires_grad_(True)
    F.conv2d(xs, w_bin, padding=1).backward(gy)
    torch.testing.assert_close(x.grad, xs.grad * (x.detach().abs() < 1))


def test_scheme_registry_config_and_validation():
    assert {"bop", "bop2"} <= set(binarize.names())
    assert isinstance(binarize.get("bop2ndorder"), binarize.get("bop2").__class__)
    spec = {"schedule": "step", "start": 1e-4, "factor": 0.1, "every": 100}
    scheme = binarize.get("bop", gamma=spec)
    assert binarize.get(scheme.config()).config() == scheme.config() == {
        "name": "bop", "threshold": 1e-8, "gamma": spec}
    assert binarize.get("bop2").config() == {"name": "bop2", "threshold": 1e-6, "gamma": 1e-6,
                                             "sigma": 1e-2, "bias_correction": False}
    for name, kwargs, message in [
        ("bop", {"gamma": -1.0}, "binarizer 'bop': Bop: gamma must be"),
        ("bop", {"gamma": {"schedule": "linear", "start": 1.0}}, "binarizer 'bop': gamma: "),
        ("bop2", {"sigma": 0.0, "bias_correction": True}, "must be > 0 with bias_correction"),
        ("bop2", {"bias_correction": "yes"}, "bias_correction must be true or false"),
        ("bop", {"sigma": 1.0}, "has no hyper-parameter sigma"),
    ]:
        with pytest.raises(BnasError, match=message):
            binarize.get(name, **kwargs)


@pytest.mark.parametrize("name", ["bop", "bop2"])
def test_recipes_build_their_schedules(name):
    scheme_class = binarize.BINARIZERS.get(name)
    net = _Net()
    for family in scheme_class.recipes:
        recipe = scheme_class.recipe(family)
        assert recipe["optimizer"] == "adam" and recipe["weight_decay"] == 0.0
        scheme = binarize.get(name, **recipe["binarizer_hparams"])
        opt = scheme.optimizer(net, OptimizerSettings(recipe["lr"], recipe["optimizer"]),
                               RunSpec(recipe["epochs"], 7, family))
        group = opt.optimizers[1].param_groups[0]
        assert group["gamma"](0) == recipe["binarizer_hparams"]["gamma"]["start"]
        with pytest.raises(BnasError, match="needs the number of epochs"):
            scheme.optimizer(net, OptimizerSettings(0.01))
    cifar = scheme_class.recipe("cifar")["binarizer_hparams"]
    if name == "bop":  # Helwegen et al. Sec. 5.2: x0.1 every 100 epochs
        gamma = from_spec(cifar["gamma"], steps_per_epoch=1000, epochs=500)
        assert [gamma(t) for t in (0, 99_999, 100_000, 499_999)] == pytest.approx(
            [1e-4, 1e-4, 1e-5, 1e-8])
    else:  # linear tau 1e-5 -> 1e-8, gamma 1e-2 -> 1e-5, sigma 1e-7 -> 1e-2 over 500 epochs
        ends = {k: from_spec(v, 1000, 500)(500_000) for k, v in cifar.items()}
        assert ends == pytest.approx({"threshold": 1e-8, "gamma": 1e-5, "sigma": 1e-2})


def test_binary_weights_never_get_weight_decay():
    net = _Net()
    opt = binarize.get("bop").optimizer(net, OptimizerSettings(0.01, "adam", weight_decay=0.1))
    adam, bop = opt.optimizers
    assert [p for g in bop.param_groups for p in g["params"]] == [net.conv.weight]
    assert "weight_decay" not in bop.param_groups[0]
    adam_params = [p for g in adam.param_groups for p in g["params"]]
    assert all(p is not net.conv.weight for p in adam_params) and len(adam_params) == 4
    assert adam.param_groups[0]["weight_decay"] == 0.1


@pytest.mark.parametrize("name", ["bop", "bop2"])
def test_training_keeps_binary_weights_binary(name):
    torch.manual_seed(0)
    hp = {"gamma": 1e-3, "threshold": 1e-6} if name == "bop" else {
        "gamma": 1e-2, "sigma": 1e-2, "threshold": 1e-4}
    model = bnas.build_model("resnet20_1w1a", binarizer=name, **hp)
    opt = model.binarizer.optimizer(model, OptimizerSettings(0.01, "adam"))
    convs = list(model.binarizer.binary_convs(model))
    assert len(convs) == 18
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))
    losses, ratios = [], []
    for _ in range(4):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        ratios.append(opt.optimizers[1].last_flip_ratio)
        for conv in convs:
            assert bool(((conv.weight == 1) | (conv.weight == -1)).all())
    assert len(set(losses)) > 1
    assert all(0.0 <= r <= 1.0 for r in ratios) and max(ratios[1:]) > 0.0
