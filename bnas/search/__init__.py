"""Differentiable architecture search of binary cells (BNAS, Kim, Singh, Choi, ECCV 2020).

``bnas search --save NAME`` (or :func:`search`) trains a supernet whose edges mix every
operation of a search space (:mod:`bnas.search.mixed`, :mod:`bnas.search.fanout`,
:mod:`bnas.search.cell`, :mod:`bnas.search.network`), alternating architecture steps (first- or second-order DARTS
with BNAS's annealed diversity objective, :mod:`bnas.search.architect`) and weight steps under
any binarization scheme (:mod:`bnas.search.loop`). After every epoch it derives two genotypes
(:mod:`bnas.search.derive`): ``NAME`` and ``NAME_imagenet`` (zeroise down-weighted by
``gamma``); those of the best validation epoch are saved where ``bnas train``, ``draw`` and
``show`` find them by name.

Deviations from BNAS's code (bugs there, the paper's meaning here): the diversity term covers
every edge of both cell types; ``gamma`` divides the zeroise column (not the first edge's
row); every operation's convolution is binarized; an epoch's genotype comes from the alphas
its validation measured; genotypes are JSON files, not lines appended to ``genotypes.py``;
data loaders are built once; any device works.

``--cost ops|bops|flops|latency`` also minimises the expected cost of the retrained network
(:mod:`bnas.search.cost`, :mod:`bnas.search.latency`), toward a budget with ``--cost-target``;
several ``--cost-weight`` values sweep it and write the accuracy-cost Pareto front
(:mod:`bnas.search.pareto`).

Search is compute-hungry: every edge runs every candidate. The fast path computes the same
maths as the reference path with far less memory and time (see
``benchmarks/search_step.py``); on small machines, search narrow and shallow
(``--init-channels``, ``--layers``, ``--image-size``, ``--subset``).
"""
from . import latency  # noqa: F401  (the latency cost kind registers itself)
from .architect import Architect, diversity_weight, mean_edge_entropy
from .config import SearchConfig, resolve
from .derive import derive, derive_cell
from .loop import SearchResult, Searcher, search
from .network import SearchNetwork

__all__ = ["Architect", "SearchConfig", "SearchNetwork", "SearchResult", "Searcher", "derive",
           "derive_cell", "diversity_weight", "mean_edge_entropy", "resolve", "search"]
