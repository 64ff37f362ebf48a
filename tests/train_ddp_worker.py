"""Run by ``torchrun`` in test_train_ddp.py: one tiny training, then each process saves the
weights it ended with, so the test can compare the processes."""
from __future__ import annotations

import json
import os
import sys

import torch

from bnas.train import Trainer, resolve_config
from bnas.run.context import distributed_context

if __name__ == "__main__":
    cfg = resolve_config(None, json.loads(sys.argv[1]))
    with distributed_context(cfg.device) as ctx:
        trainer = Trainer(cfg, ctx)
        trainer.fit()
        torch.save(trainer.model.state_dict(), os.path.join(cfg.out, f"rank{ctx.rank}.pt"))
