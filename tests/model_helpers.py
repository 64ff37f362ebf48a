"""Helpers shared by the tests that compare a network's lean path with its reference path."""
from __future__ import annotations

import torch
from torch import nn


def weighted_step(model: nn.Module, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and input gradient of a fixed weighted sum of ``model(x)``, with the random stream
    (drop path) seeded by ``seed``, into freshly zeroed gradients."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)
    out = model(x)
    (out * torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), x.grad
