"""Two search processes under torchrun (gloo, CPU) end with the same alphas, genotypes and
weights: DistributedDataParallel averages the weight gradients, the architect averages the
alpha gradients."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from launch import torchrun_two_processes

WORKER = Path(__file__).with_name("search_ddp_worker.py")


def test_two_processes_search_as_one(tmp_path):
    settings = {"save": "ddp", "dataset": "digits", "layers": 3, "init_channels": 4, "epochs": 2,
                "subset": 192, "batch_size": 32, "image_size": 16, "device": "cpu",
                "progress": False, "workers": 0, "out": str(tmp_path)}
    torchrun_two_processes(WORKER, settings)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    for name, alpha in ranks[0]["alphas"].items():
        assert torch.equal(alpha, ranks[1]["alphas"][name]), name
    assert ranks[0]["genotypes"] == ranks[1]["genotypes"]
    for name, tensor in ranks[0]["weights"].items():
        if "running" not in name and "num_batches" not in name:  # statistics stay per process
            assert torch.equal(tensor, ranks[1]["weights"][name]), name
    log = (tmp_path / "log.txt").read_text()
    assert "2 process(es)" in log and (tmp_path / "ddp.json").is_file()
    # 96 weight images over 2 processes of batch 16 (32 in all): 3 steps per epoch each
    assert json.loads((tmp_path / "genotypes.jsonl").read_text().splitlines()[-1])["epoch"] == 1
