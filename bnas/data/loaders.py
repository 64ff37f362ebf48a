"""Batches for training and validation, for one process or many.

Training batches come from a :class:`~torch.utils.data.distributed.DistributedSampler` (one
process is a world of one): each process reads its own shard of a permutation that depends
only on the seed and the epoch, and the workers' augmentation seeds are drawn from a generator
reseeded the same way. Epoch ``e`` therefore sees the same batches whether the run got there
directly or was resumed from a checkpoint. Validation shards the set without padding, so the
summed counts of all processes cover every sample exactly once.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from ..errors import BnasError
from ..run.rng import epoch_seed


def subset(dataset: Dataset, size: int | float | None, seed: int) -> Dataset:
    """``size`` samples (an int) or that fraction (a float < 1) of ``dataset``, drawn once with
    ``seed`` and kept in their original order; the whole set for ``None``."""
    if size is None:
        return dataset
    total = len(dataset)
    count = size if isinstance(size, int) else max(1, round(size * total))
    if count >= total:
        return dataset
    chosen = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:count]
    return Subset(dataset, sorted(chosen.tolist()))


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: every sample once over all processes, no padding."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EpochLoader:
    """A DataLoader whose shuffling and augmentation depend only on (seed, epoch, rank)."""

    def __init__(self, loader: DataLoader, seed: int, rank: int) -> None:
        self.loader = loader
        self.seed = seed
        self.rank = rank

    def set_epoch(self, epoch: int) -> None:
        if isinstance(self.loader.sampler, DistributedSampler):
            self.loader.sampler.set_epoch(epoch)
        self.loader.generator.manual_seed(epoch_seed(self.seed, epoch, self.rank))

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def build_loader(dataset: Dataset, *, batch_size: int, train: bool, seed: int, rank: int = 0,
                 world_size: int = 1, workers: int = 0, pin_memory: bool = False) -> EpochLoader:
    """Batches of ``batch_size`` (per process) from this process's shard of ``dataset``.

    Datasets held in memory as tensors are read in the main process (workers would only add
    copies). Validation uses at most one worker per CPU this process may run on (its batches
    do not depend on the number of workers; a training loader keeps ``workers``, whose
    augmentation streams do). A training shard whose last batch would hold a single sample
    drops it: BatchNorm cannot take training statistics from one value per channel.
    """
    if len(dataset) == 0:
        raise BnasError("the dataset is empty")
    if isinstance(dataset, TensorDataset) or (isinstance(dataset, Subset)
                                              and isinstance(dataset.dataset, TensorDataset)):
        workers = 0
    if train:
        sampler: Sampler[int] = DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                                   shuffle=True, seed=seed)
        drop_last = len(sampler) % batch_size == 1
        if len(sampler) <= 1:
            raise BnasError(f"too few training samples ({len(dataset)}) for {world_size} "
                            f"process(es)")
    else:
        sampler = ShardSampler(len(dataset), rank, world_size)
        drop_last = False
        workers = min(workers, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=pin_memory, drop_last=drop_last,
                        generator=torch.Generator().manual_seed(seed))
    return EpochLoader(loader, seed, rank)
