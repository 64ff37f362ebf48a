"""Random search: genotypes drawn uniformly from the space the BNAS search derives from.

The baseline NAS results are measured against (DARTS, Liu et al., ICLR 2019, Sec. 3.2 and
Table 1; Li and Talwalkar, "Random Search and Reproducibility for NAS", UAI 2019; Yang et al.,
"NAS Evaluation is Frustratingly Hard", ICLR 2020). "The same space" means exactly the cells
:func:`bnas.search.derive.derive_cell` can produce:

- each intermediate node ``i`` (inputs ``0 .. i-1``) keeps two edges from two *distinct*
  predecessors, an unordered pair drawn uniformly among the ``C(i, 2)``;
- each kept edge carries one operation drawn uniformly from the space, ``zeroise`` included:
  in BNAS zeroise competes in both choices of the derivation as a real layer (it is not
  DARTS's "no edge" placeholder), so a derived cell can hold it and a drawn one can too;
- the output concatenates every intermediate node, as a derived cell does.

Every cell therefore has probability ``1 / (prod_i C(i, 2) * n_ops^(2 * steps))``, the normal
and reduction cells independently. A derived cell lists a node's stronger edge first; a drawn
one has no strengths and lists the lower input first (the same network).

An optional cost band (parameters and/or OPs, :mod:`bnas.profiling`) keeps only genotypes whose
network falls inside it: rejection sampling, so the kept ones are uniform over the genotypes
in the band. The cost is that of the network the search's settings describe (``--layers``,
``--init-channels``, ``--image-size``, ``--dataset``, ``--binarizer``) built from the drawn cell.
"""
from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import __version__
from .. import genotype as G
from ..errors import BnasError
from ..ops import SPACES
from .cost import _TARGET, COUNT_SUFFIXES, RetrainSize, genotype_counts

#: How many draws a cost band may take per genotype kept before giving up.
DRAWS_PER_SAMPLE = 200
BAND_KEYS = ("params", "ops")


def count_cells(n_ops: int, steps: int) -> int:
    """How many distinct cells the space holds: ``prod_i C(i, 2) * n_ops^(2 * steps)``."""
    return math.prod(math.comb(node, 2) for node in range(2, steps + 2)) * n_ops ** (2 * steps)


def sample_cell(rng: random.Random, op_names: Sequence[str], steps: int) -> G.Cell:
    """One cell drawn uniformly (see the module docstring)."""
    nodes = []
    for node in range(2, steps + 2):
        inputs = sorted(rng.sample(range(node), 2))
        nodes.append(tuple((rng.choice(op_names), j) for j in inputs))
    return G.Cell(tuple(nodes), tuple(range(2, steps + 2)))


def sample_genotype(rng: random.Random, space: str, steps: int, name: str | None = None) -> G.Genotype:
    """A cell genotype of ``space`` with independently drawn normal and reduction cells."""
    op_names = SPACES.get(space)
    space = SPACES.canonical(space)
    return G.Genotype(name=name, kind="cell", space=space, normal=sample_cell(rng, op_names, steps),
                      reduce=sample_cell(rng, op_names, steps))


def parse_amount(text: str) -> float:
    """``"250K"``, ``"1.5M"``, ``"2e6"`` -> a number (the counts ``--cost-target`` reads)."""
    match = _TARGET.match(str(text))
    if not match or match.group(2).upper() not in COUNT_SUFFIXES:
        raise BnasError(f"cannot read the amount {text!r} (e.g. 250K, 1.5M, 2e6)")
    return float(match.group(1)) * COUNT_SUFFIXES[match.group(2).upper()]


def parse_band(text: str, key: str) -> tuple[float, float]:
    """``"LO:HI"`` (either side may be empty) -> ``(lo, hi)``."""
    low, sep, high = str(text).partition(":")
    if not sep:
        raise BnasError(f"--band-{key} expects LO:HI (e.g. 200K:400K or :1M), got {text!r}")
    band = (parse_amount(low) if low.strip() else 0.0,
            parse_amount(high) if high.strip() else math.inf)
    if band[0] > band[1]:
        raise BnasError(f"--band-{key} {text}: the lower bound exceeds the upper")
    return band


@dataclass(frozen=True)
class CostBand:
    """Bounds on parameters and OPs (inclusive); an empty band accepts everything."""

    bounds: dict[str, tuple[float, float]]

    @classmethod
    def from_settings(cls, settings: dict[str, str]) -> CostBand:
        unknown_keys = sorted(set(settings) - set(BAND_KEYS))
        if unknown_keys:
            raise BnasError(f"unknown cost band {', '.join(unknown_keys)} (known: "
                            f"{', '.join(BAND_KEYS)})")
        return cls({k: parse_band(v, k) for k, v in settings.items()})

    def __bool__(self) -> bool:
        return bool(self.bounds)

    def holds(self, cost: dict[str, float]) -> bool:
        return all(lo <= cost[k] <= hi for k, (lo, hi) in self.bounds.items())


def network_cost(genotype: G.Genotype, cfg: Any) -> dict[str, float]:
    """Parameters and OPs of the network ``cfg`` (a search configuration) describes, built
    from ``genotype``'s cells."""
    size = RetrainSize.of(cfg.dataset, cfg.layers, cfg.init_channels, cfg.image_size)
    counts = genotype_counts(genotype, size, cfg.binarizer, **cfg.binarizer_hparams)
    return {k: counts[k] for k in BAND_KEYS}


def draw(cfg: Any) -> list[G.Genotype]:
    """``cfg.samples`` genotypes named ``<save>_<k>``, drawn with ``cfg.seed`` (within
    ``cfg.cost_band`` when given), each with its provenance."""
    band = CostBand.from_settings(cfg.cost_band)
    rng = random.Random(cfg.seed)
    found: list[G.Genotype] = []
    draws = 0
    while len(found) < cfg.samples:
        if band and draws >= DRAWS_PER_SAMPLE * cfg.samples:
            raise BnasError(f"only {len(found)} of {cfg.samples} genotypes fell in the cost band "
                            f"{cfg.cost_band} after {draws} draws; widen the band")
        draws += 1
        genotype = sample_genotype(rng, cfg.space, cfg.steps, f"{cfg.save}_{len(found)}")
        cost = network_cost(genotype, cfg) if band else None
        if cost is not None and not band.holds(cost):
            continue
        genotype.description = (f"drawn at random by bnas {__version__} from the {cfg.space} "
                                f"space (baseline)")
        genotype.provenance = {
            "strategy": "random", "sample": len(found), "seed": cfg.seed, "draws": draws,
            "space": cfg.space, "steps": cfg.steps, "dataset": cfg.dataset,
            "bnas_version": __version__, "date": dt.datetime.now().isoformat(timespec="seconds"),
            "cost_band": dict(cfg.cost_band), **({"cost": cost} if cost is not None else {}),
            "network": {k: getattr(cfg, k) for k in ("layers", "init_channels", "image_size",
                                                     "binarizer")}}
        found.append(genotype)
    return found
