"""Splitting a training set between the weights and the architecture (DARTS / BNAS search)."""
from __future__ import annotations

import torch

from ..errors import BnasError


def split_indices(n: int, portion: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """A seeded random permutation of ``range(n)`` cut at ``floor(portion * n)``: the first part
    trains the weights, the rest the architecture (DARTS and BNAS use ``portion = 0.5``).

    The permutation keeps both parts balanced for datasets stored class by class (image
    folders); both parts must be non-empty.
    """
    if not isinstance(portion, (int, float)) or not 0.0 < portion < 1.0:
        raise BnasError(f"--train-portion must lie strictly between 0 and 1, got {portion!r}")
    cut = int(portion * n)
    if cut < 1 or cut >= n:
        raise BnasError(f"--train-portion {portion:g} of {n} images leaves "
                        f"{'no weight' if cut < 1 else 'no architecture'} images")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[:cut], order[cut:]
