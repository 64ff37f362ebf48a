"""Run by ``torchrun --nproc_per_node 1`` in test_cuda.py: a tiny training and a tiny search
whose model is wrapped in DistributedDataParallel over a real process group (NCCL on the GPU,
gloo on the CPU) although there is one process. A plain one-process launch does not form a
group (:func:`bnas.run.context.distributed_context`), so the group is formed here and the run
is told it is distributed; everything else is the engine's and the search's own code."""
from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from bnas.run.context import Context, resolve_device
from bnas.search.config import resolve
from bnas.search.loop import Searcher
from bnas.train import Trainer, resolve_config


class GroupContext(Context):
    """A process of a (one-process) group: DDP wrapping and the collectives are used."""

    @property
    def distributed(self) -> bool:
        return True


if __name__ == "__main__":
    settings = json.loads(sys.argv[1])
    device = resolve_device(settings["train"]["device"], int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    try:
        ctx = GroupContext(rank=dist.get_rank(), local_rank=int(os.environ["LOCAL_RANK"]),
                           world_size=dist.get_world_size(), device=device)
        trainer = Trainer(resolve_config(None, settings["train"]), ctx)
        trainer.fit()
        searcher = Searcher(resolve(settings["search"]), ctx)
        result = searcher.run()
        torch.save({"backend": dist.get_backend(), "wrapped": [type(trainer.net).__name__,
                                                              type(searcher.net).__name__],
                    "genotype": result.genotype.to_json()},
                   os.path.join(settings["train"]["out"], "worker.pt"))
    finally:
        dist.destroy_process_group()
