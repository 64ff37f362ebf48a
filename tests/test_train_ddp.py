"""Two processes under torchrun (gloo, CPU): DistributedDataParallel keeps their weights
identical, and rank 0's checkpoint evaluates to the same accuracy in a single process."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from launch import torchrun_two_processes

from bnas.train import evaluate, resolve_config
from bnas.train import checkpoint

WORKER = Path(__file__).with_name("train_ddp_worker.py")


def test_two_processes_train_as_one(tmp_path):
    settings = {"arch": "latest_cell_zeroise", "layers": 3, "init_channels": 8, "dataset": "digits",
                "epochs": 2, "batch_size": 32, "train_subset": 128, "val_subset": 75, "workers": 0,
                "progress": False, "drop_path": 0.2, "binarizer": "recu", "device": "cpu",
                "out": str(tmp_path)}
    torchrun_two_processes(WORKER, settings)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for name, tensor in ranks[0].items():
        assert torch.equal(tensor, ranks[1][name]), name
    saved = checkpoint.load(tmp_path / "checkpoint.pt")
    assert saved["epoch"] == 2 and len(saved["rng"]) == 2
    for name, tensor in ranks[0].items():
        assert torch.equal(saved["model"][name], tensor), name
    ddp_top1 = saved["metrics"]["top1"]
    single = evaluate(resolve_config(None, {**settings, "out": str(tmp_path / "eval")}),
                      tmp_path / "checkpoint.pt")
    assert single["samples"] == 75
    assert single["top1"] == pytest.approx(ddp_top1, abs=100 / 75 + 1e-9)
