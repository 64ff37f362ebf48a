"""The architecture step: BNAS's diversity objective over every edge of both cell types, the
Adam settings, and second-order (unrolled) DARTS, against hand-written computations."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnas.search.architect import Architect, diversity_weight, mean_edge_entropy
from bnas.search.network import SearchNetwork


def tiny_net(seed=0):
    torch.manual_seed(seed)
    net = SearchNetwork(4, c=4, layers=3).double()
    with torch.no_grad():
        for alpha in net.arch_parameters():
            alpha.normal_()
    return net


def batch(seed, n=4):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, 8, 8, generator=gen, dtype=torch.float64),
            torch.randint(0, 4, (n,), generator=gen))


def test_entropy_is_the_mean_over_every_edge_of_both_cell_types():
    rng = np.random.default_rng(0)
    normal, reduce = rng.normal(size=(14, 7)), rng.normal(size=(14, 7)) * 3
    expected = []
    for table in (normal, reduce):
        for row in table:
            p = np.exp(row - row.max())
            p /= p.sum()
            expected.append(-(p * np.log(p)).sum())
    got = mean_edge_entropy([torch.tensor(normal), torch.tensor(reduce)])
    assert got.item() == pytest.approx(np.mean(expected), rel=1e-12)
    # A confident reduction row lowers the mean: every row of both types is reached.
    reduce[5] = [50, 0, 0, 0, 0, 0, 0]
    assert mean_edge_entropy([torch.tensor(normal), torch.tensor(reduce)]) < got


def test_diversity_weight_anneals_exponentially():
    assert diversity_weight(0, 1.0, 7.7) == 1.0
    assert diversity_weight(7, 2.0, 7.7) == pytest.approx(2.0 * math.exp(-7 / 7.7))


def test_first_order_step_is_adam_on_the_diversity_objective():
    net = tiny_net()
    xv, yv = batch(1)
    epoch = 3
    reference = net.new()
    logits = reference(xv)
    alphas = reference.arch_parameters()
    probs = [F.softmax(a, -1) for a in alphas]
    entropy = torch.cat([-(p * torch.log(p)).sum(-1) for p in probs]).mean()
    objective = F.cross_entropy(logits, yv) - 1.0 * math.exp(-epoch / 7.7) * entropy
    expected = torch.autograd.grad(objective, alphas)
    before = [a.detach().clone() for a in net.arch_parameters()]
    architect = Architect(net)
    architect.step(xv, yv, epoch)
    for alpha, grad, old in zip(net.arch_parameters(), expected, before):
        torch.testing.assert_close(alpha.grad, grad, rtol=1e-9, atol=1e-12)
        # Adam's first step, betas (0.5, 0.999), L2 weight decay 1e-3, lr 3e-4, eps 1e-8.
        g = grad + 1e-3 * old
        m_hat = (1 - 0.5) * g / (1 - 0.5)
        v_hat = (1 - 0.999) * g * g / (1 - 0.999)
        torch.testing.assert_close(alpha.detach(), old - 3e-4 * m_hat / (v_hat.sqrt() + 1e-8))
    group = architect.optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (3e-4, (0.5, 0.999), 1e-3)


def test_second_order_step_is_the_unrolled_gradient():
    net = tiny_net(1)
    optimizer = torch.optim.SGD(net.weight_parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    x, y = batch(2)
    xv, yv = batch(3)
    with net.grads_for("weights"):  # one weight step, so that momentum buffers exist
        F.cross_entropy(net(x), y).backward()
    optimizer.step()
    epoch, xi = 2, 0.05

    # By hand, on copies: w' = w - xi (0.9 buf + g + 3e-4 w), then the finite-difference term.
    def with_weights(values):
        copy_net = net.new()
        with torch.no_grad():
            for p, v in zip(copy_net.weight_parameters(), values):
                p.copy_(v)
        return copy_net

    w = [p.detach().clone() for p in net.weight_parameters()]
    bufs = [optimizer.state[p]["momentum_buffer"] for p in net.weight_parameters()]
    # Binary convolutions often output exactly 0, so a rounding difference anywhere flips ReLU
    # masks and changes gradients discontinuously: the hand computation runs the same
    # gradient modes and sums in the same order as the architect.
    probe = with_weights(w)
    with probe.grads_for("weights"):
        g = torch.autograd.grad(F.cross_entropy(probe(x), y), list(probe.weight_parameters()))
    unrolled = with_weights([wi - xi * ((gi + 3e-4 * wi) + 0.9 * b) for wi, b, gi in zip(w, bufs, g)])
    alphas = unrolled.arch_parameters()
    entropy = mean_edge_entropy(alphas)
    objective = F.cross_entropy(unrolled(xv), yv) - math.exp(-epoch / 7.7) * entropy
    grads = torch.autograd.grad(objective, [*alphas, *unrolled.weight_parameters()])
    d_alpha, d_w = grads[:2], grads[2:]
    eps = 0.01 / torch.cat([d.flatten() for d in d_w]).norm()
    finite = []
    for sign in (1, -1):
        moved = with_weights([wi + sign * eps * d for wi, d in zip(w, d_w)])
        with moved.grads_for("arch"):
            finite.append(torch.autograd.grad(F.cross_entropy(moved(x), y), moved.arch_parameters()))
    expected = [da - xi * (gp - gn) / (2 * eps) for da, gp, gn in zip(d_alpha, *finite)]

    weights_before = [p.detach().clone() for p in net.weight_parameters()]
    architect = Architect(net, order=2)
    architect.step(xv, yv, epoch, x_train=x, y_train=y, weight_optimizer=optimizer)
    for alpha, grad in zip(net.arch_parameters(), expected):
        torch.testing.assert_close(alpha.grad, grad, rtol=1e-7, atol=1e-10)
    for p, old in zip(net.weight_parameters(), weights_before):  # the searched net is untouched
        assert torch.equal(p.detach(), old)
