"""Layers of the schemes under test, set up the same way for the formula tests
(:mod:`binarize_formulas` holds the formulas they are compared with)."""
from __future__ import annotations

import torch

import bnas.binarize as B
from binarize_formulas import IN, KERNEL, OUT, seeded


def alpha_layer(name: str, geometry: dict, epoch: int, epochs: int) -> torch.nn.Module:
    """A float64 layer of scheme ``name`` (one with a per-channel ``alpha``) with seeded weights
    and scales, at ``epoch`` of ``epochs``."""
    scheme = B.get(name)
    layer = scheme.conv(IN, OUT, KERNEL, **geometry).double()
    with torch.no_grad():
        layer.weight.copy_(seeded(OUT, IN, KERNEL, KERNEL, seed=1))
        layer.alpha.copy_(seeded(OUT, 1, 1, seed=2).abs() + 0.1)
    scheme.set_epoch(layer, epoch, epochs)
    return layer


def schedule(name: str, buffer: str, epochs: int, at: tuple[int, ...]) -> list[list[float]]:
    """``buffer`` of two layers of scheme ``name`` (of different shapes) after ``set_epoch`` at
    each epoch of ``at`` (of ``epochs``)."""
    scheme = B.get(name)
    model = torch.nn.Sequential(scheme.conv(4, 4, 3), scheme.conv(4, 8, 1))
    values = []
    for epoch in at:
        scheme.set_epoch(model, epoch, epochs)
        values.append([float(getattr(layer, buffer)) for layer in model])
    return values
