"""Per-sample / per-out-channel standardisation shared by RBNN, ReCU and SiMaN."""
from __future__ import annotations

import torch


def standardize(x: torch.Tensor, eps: float = 0.0, center: bool = True) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` for each index of the first dimension (a sample of a
    batch, or an out-channel of a weight), statistics over all the other dimensions; ``var`` is
    the unbiased variance (torch's default). ``center=False`` keeps the numerator ``x``
    (ReCU's activation scaling) while the variance is still taken about the mean."""
    dims = tuple(range(1, x.dim()))
    numerator = x - x.mean(dim=dims, keepdim=True) if center else x
    return numerator / torch.sqrt(x.var(dim=dims, keepdim=True) + eps)
