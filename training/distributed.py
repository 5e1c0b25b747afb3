"""DistributedDataParallel plumbing for runs under ``torchrun``: process-group setup from the
launcher's environment, the rank-0 rule for output, metric reduction and data sharding.

A plain ``python script.py`` run sees none of torchrun's variables and gets a one-process
:class:`DistContext` (rank 0 of 1), so the engine calls the same helpers in both cases and they
do nothing extra when not distributed.
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

from .experiment import UsageError

__all__ = ["DistContext", "ResumableSampler", "ShardSampler", "all_gather", "all_reduce_max",
           "all_reduce_sum", "barrier", "cleanup", "init_distributed", "is_main_process",
           "per_rank_batch", "process_device"]

# A rank that dies or hangs should not keep the others waiting for NCCL/gloo's 30-minute default.
_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its
    node; ``enabled`` when a process group is up (launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False


def init_distributed(device: torch.device) -> DistContext:
    """Join torchrun's process group if ``RANK``/``WORLD_SIZE`` are set, else a 1-process context.

    The backend is NCCL for CUDA and gloo for the CPU. With CUDA each process takes the GPU
    ``LOCAL_RANK`` of its node.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistContext()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=_TIMEOUT)
    return DistContext(rank, world, local_rank, enabled=True)


def process_device(device: torch.device, context: DistContext) -> torch.device:
    """``cuda:LOCAL_RANK`` for a distributed CUDA run (one GPU per process), else ``device``."""
    if context.enabled and device.type == "cuda":
        return torch.device("cuda", context.local_rank)
    return device


def is_main_process() -> bool:
    """True on rank 0 or without a process group: the one process that prints and writes files."""
    return not dist.is_initialized() or dist.get_rank() == 0


def _reduce(values: list[float], op: dist.ReduceOp, device: torch.device) -> list[float]:
    if not dist.is_initialized():
        return values
    # float64: sums of per-sample losses over a large test set keep their digits
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (unchanged without a process group)."""
    return _reduce(values, dist.ReduceOp.SUM, device)


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    """Element-wise maximum of ``values`` over all ranks, so that all ranks take the same branch
    (a rank that stopped alone would leave the others waiting in the next collective)."""
    return _reduce(values, dist.ReduceOp.MAX, device)


def all_gather(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` without a process group."""
    if not dist.is_initialized():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    """Wait for all ranks (no-op without a process group)."""
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if one is up."""
    if dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch(global_batch: int, context: DistContext, flag: str) -> int:
    """``global_batch / world_size``: ``-b`` is the global batch, as under the authors'
    DataParallel, so the same command trains the same way on any number of GPUs.

    Raises:
        UsageError: ``global_batch`` does not divide evenly over the ranks.
    """
    if global_batch % context.world_size:
        raise UsageError(f"{flag} {global_batch} is the global batch and must be divisible by "
                         f"the {context.world_size} processes")
    return global_batch // context.world_size


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of a data set: every test image is evaluated by exactly
    one rank (DistributedSampler would pad with repeats and bias the metrics)."""

    def __init__(self, size: int, context: DistContext) -> None:
        self.indices = range(context.rank, size, context.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class ResumableSampler(DistributedSampler):
    """DistributedSampler that leaves out the first ``skip`` indices of this rank's epoch: a
    run resumed inside an epoch goes on with the batches the interrupted one had not reached
    (the order itself follows from the seed and the epoch)."""

    skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return super().__len__() - self.skip
