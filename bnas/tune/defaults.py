"""Default search spaces of ``bnas tune``: per binarizer (train mode; each scheme declares its
own next to its hyper-parameters) and for the search.

Ranges bracket each method's published setting by about a decade either side (log scale for
rates and decays); ranges of a schedule's two ends do not overlap, so every sample is a valid
schedule. ``bnas tune --print-space`` shows the space a run would use; ``--space FILE`` and
``--param`` replace it.
"""
from __future__ import annotations

from typing import Any

from ..binarize import BINARIZERS
from ..binarize.hparams import SGD_SPACE, log_range as _log

Space = dict[str, dict[str, Any]]


#: BNAS search (Kim et al., ECCV 2020): entropy weight lambda 1.0, annealing tau 7.7 epochs,
#: architecture Adam lr 3e-4.
SEARCH_SPACE: Space = {"lam": _log(0.1, 10.0), "tau": _log(1.0, 50.0), "arch_lr": _log(1e-4, 3e-3)}

#: Added to the search space when the search counts a cost (``--search-arg cost=ops``): the cost
#: term's weight (bnas.search.cost: 0.1 already trades a tenth of the dearest architecture's
#: normalised cost against the cross-entropy).
COST_SPACE: Space = {"cost_weight": _log(1e-3, 10.0)}


def train_space(binarizer: str) -> Space:
    """The default train-mode space for ``binarizer`` (its canonical name): the one the scheme
    declares with its hyper-parameters (:attr:`bnas.binarize.Binarizer.tune_space`); SGD's for
    an unknown name."""
    return BINARIZERS.get(binarizer).tune_space if binarizer in BINARIZERS else SGD_SPACE
