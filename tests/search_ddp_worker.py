"""Run by ``torchrun`` in test_search_ddp.py: one tiny search, then each process saves the
alphas, genotypes and weights it ended with, so the test can compare the processes."""
from __future__ import annotations

import json
import os
import sys

import torch

from bnas.search.config import resolve
from bnas.search.loop import Searcher
from bnas.run.context import distributed_context

if __name__ == "__main__":
    cfg = resolve(json.loads(sys.argv[1]))
    with distributed_context(cfg.device) as ctx:
        searcher = Searcher(cfg, ctx)
        result = searcher.run()
        torch.save({"weights": searcher.model.state_dict(), "alphas": result.alphas,
                    "genotypes": [result.genotype.to_json(), result.genotype_imagenet.to_json()],
                    "world_size": ctx.world_size},
                   os.path.join(cfg.out, f"rank{ctx.rank}.pt"))
