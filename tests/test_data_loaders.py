"""The loaders' worker processes: validation asks for no more than there are CPUs."""
from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import Dataset

from bnas.data.loaders import build_loader


class Squares(Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((2,), float(i * i)), i


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_validation_uses_at_most_one_worker_per_cpu():
    """A validation loader asks for no more workers than CPUs (its batches do not depend on
    them); a training loader keeps what it was given (its augmentation streams do)."""
    cpus = len(os.sched_getaffinity(0))
    val = build_loader(Squares(), batch_size=4, train=False, seed=0, workers=cpus + 3)
    assert val.loader.num_workers == cpus
    assert [int(y) for _, ys in val for y in ys] == list(range(10))
    train = build_loader(Squares(), batch_size=4, train=True, seed=0, workers=cpus + 3)
    assert train.loader.num_workers == cpus + 3
