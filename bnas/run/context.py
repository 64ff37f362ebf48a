"""One process or many: the device, the process group, and the few collectives a run uses.

Launched by ``torchrun`` (which sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``), a run joins
the process group (NCCL on GPUs, gloo on CPUs) and each process drives ``cuda:LOCAL_RANK``.
Launched plainly, it is a single process and every collective is the identity.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import BnasError


@dataclass(frozen=True)
class Context:
    """Where this process runs and who its peers are."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs and checkpoints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over all processes (in place)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order."""
        if not self.distributed:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Give every process rank 0's buffers of ``module`` (its BatchNorm statistics, which
        each process gathered from its own shard and which rank 0's checkpoint holds)."""
        if self.distributed:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def average_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Average ``tensors`` over the processes, in place (one collective for all)."""
        if not self.distributed or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        self.all_reduce_sum(flat)
        flat /= self.world_size
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the body on rank 0 first, then on the others (rank 0 downloads a dataset before
        the others look for it)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def to_device(self, x: torch.Tensor, y: torch.Tensor,
                  channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch on this process's device (inputs channels-last if asked)."""
        x = x.to(self.device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)


def per_process_batch(batch_size: int, ctx: Context) -> int:
    """The global batch split evenly across the processes."""
    if batch_size % ctx.world_size:
        raise BnasError(f"batch size {batch_size} does not split evenly across "
                        f"{ctx.world_size} processes")
    return batch_size // ctx.world_size


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise BnasError(f"environment variable {name} must be an integer, "
                        f"got {os.environ[name]!r}") from None


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` (the local GPU if there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise BnasError(f"unknown device '{spec}' (expected auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BnasError(f"device '{spec}' requested but no CUDA GPU is available")
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise BnasError(f"device cuda:{index} does not exist "
                            f"({torch.cuda.device_count()} GPU(s) visible)")
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise BnasError(f"unsupported device '{spec}' (expected auto, cpu, cuda or cuda:N)")
    return device


@contextmanager
def distributed_context(device: str = "auto") -> Iterator[Context]:
    """The process's :class:`Context`; joins (and finally leaves) the process group when
    launched by torchrun with more than one process."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        yield Context(device=dev)
        return
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                device_id=dev if dev.type == "cuda" else None)
    try:
        yield Context(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)
    finally:
        if owned:
            dist.destroy_process_group()
