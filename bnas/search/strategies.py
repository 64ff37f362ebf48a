"""Search strategies by name (``bnas search --strategy``): each turns a search configuration
into saved genotypes and returns the line that reports them.

- ``bnas``: the differentiable BNAS search on the supernet (:mod:`bnas.search.loop`);
- ``random``: genotypes drawn uniformly from the same space (:mod:`bnas.search.sample`), the
  baseline a search has to beat.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import genotype as G
from ..registry import Registry

if TYPE_CHECKING:
    from .config import SearchConfig
    from .loop import SearchResult


@dataclass(frozen=True)
class Strategy:
    run: Callable[[SearchConfig], str]
    description: str


STRATEGIES: Registry[Strategy] = Registry("search strategy")


def _cost(result: SearchResult) -> str:
    """What the CIFAR genotype costs, and whether it meets the budget (a search for cost)."""
    cost = result.genotype.provenance.get("cost")
    if cost is None or cost.get("kind") is None:
        return ""
    from .cost import COST_KINDS

    text = f"; it costs {COST_KINDS.get(cost['kind']).format(cost['genotype_cost'])}"
    if "meets_target" in cost:
        text += f" ({'within' if cost['meets_target'] else 'over'} the budget {cost['target']})"
    return text


def report(result: SearchResult) -> str:
    """The line that reports a BNAS search's outcome (and its cost, when it searched for one)."""
    return (f"genotypes '{result.genotype.name}' and '{result.genotype_imagenet.name}' from epoch "
            f"{result.best_epoch + 1} (val top-1 {result.best_top1:.2f}%){_cost(result)}; run "
            f"directory {result.out}")


def _bnas(cfg: SearchConfig) -> str:
    from .loop import search

    return report(search(cfg))


def _random(cfg: SearchConfig) -> str:
    from .loop import check_save_name
    from .sample import draw

    check_save_name(cfg, cfg.overwrite, [f"{cfg.save}_{k}" for k in range(cfg.samples)])
    genotypes = draw(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        for genotype in genotypes:
            G.save(genotype, cfg.genotype_path(genotype.name))
    folder = cfg.genotype_path(cfg.save).parent
    names = ", ".join(g.name for g in genotypes)
    return f"{len(genotypes)} random genotype(s) of the {cfg.space} space: {names}; saved in {folder}"


STRATEGIES.add("bnas", Strategy(_bnas, "differentiable BNAS search on the supernet (default)"))
STRATEGIES.add("random", Strategy(_random, "genotypes drawn uniformly from the same space "
                                           "(the baseline); --samples N, --band-params/--band-ops"))
