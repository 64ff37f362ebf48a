"""Default search spaces of ``bnas tune``, per binarizer (train mode) and for the search.

Ranges bracket each method's published setting by about a decade either side (log scale for
rates and decays); ranges of a schedule's two ends do not overlap, so every sample is a valid
schedule. ``bnas tune --print-space`` shows the space a run would use; ``--space FILE`` and
``--param`` replace it.
"""
from __future__ import annotations

from typing import Any

Space = dict[str, dict[str, Any]]


def _log(low: float, high: float) -> dict[str, Any]:
    return {"type": "float", "low": low, "high": high, "log": True}


def _lin(low: float, high: float) -> dict[str, Any]:
    return {"type": "float", "low": low, "high": high}


#: SGD recipes of the binary-network papers use lr 0.05-0.1 and weight decay 3e-6-5e-4.
SGD_SPACE: Space = {"lr": _log(5e-3, 0.5), "weight_decay": _log(1e-6, 1e-3)}

TRAIN_SPACES: dict[str, Space] = {
    "plain": SGD_SPACE,
    # RBNN (Lin et al., NeurIPS 2020): t = 10^(log Tmin + (log Tmax - log Tmin) e/E), Tmin 1e-2, Tmax 1e1.
    "rbnn": {**SGD_SPACE, "Tmin": _log(1e-3, 1e-1), "Tmax": _log(1.0, 100.0)},
    # ReCU (Xu et al., ICCV 2021): tau rises from 0.85 to 0.99; tau must stay in (0.5, 1).
    "recu": {**SGD_SPACE, "tau_min": _lin(0.6, 0.9), "tau_max": _lin(0.92, 0.999)},
    # SiMaN (Lin et al., TPAMI 2022): clip percentile 15 at epoch 0, decayed to 0.
    "siman": {**SGD_SPACE, "percent": _lin(5.0, 25.0)},
    # Bop (Helwegen et al., NeurIPS 2019): gamma 1e-4, threshold 1e-8; Adam lr 0.01 for the rest.
    "bop": {"lr": _log(1e-4, 1e-1), "gamma": _log(1e-6, 1e-2), "threshold": _log(1e-9, 1e-5)},
    # Bop2ndOrder (Suarez-Ramirez et al., CVPRW 2021): CIFAR-10 anneals gamma 1e-2 -> 1e-5,
    # threshold 1e-5 -> 1e-8, sigma 1e-7 -> 1e-2; tuned here as constants.
    "bop2": {"lr": _log(1e-4, 1e-1), "gamma": _log(1e-7, 1e-2), "threshold": _log(1e-9, 1e-4),
             "sigma": _log(1e-5, 1e-1)},
}

#: BNAS search (Kim et al., ECCV 2020): entropy weight lambda 1.0, annealing tau 7.7 epochs,
#: architecture Adam lr 3e-4.
SEARCH_SPACE: Space = {"lam": _log(0.1, 10.0), "tau": _log(1.0, 50.0), "arch_lr": _log(1e-4, 3e-3)}

#: Added to the search space when the search counts a cost (``--search-arg cost=ops``): the cost
#: term's weight (bnas.search.cost: 0.1 already trades a tenth of the dearest architecture's
#: normalised cost against the cross-entropy).
COST_SPACE: Space = {"cost_weight": _log(1e-3, 10.0)}


def train_space(binarizer: str) -> Space:
    """The default train-mode space for ``binarizer`` (its canonical name); SGD's otherwise."""
    return TRAIN_SPACES.get(binarizer, SGD_SPACE)
