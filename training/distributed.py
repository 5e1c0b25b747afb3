"""DistributedDataParallel plumbing for runs under ``torchrun``: the process group, the rank-0
rule for output, reductions and the resumable sampler. Without a process group (a plain
``python script.py``) every helper does nothing extra, so the engine calls the same code."""
from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from .experiment import UsageError


@dataclass(frozen=True)
class DistContext:
    """This process's ``rank`` of ``world_size``, ``local_rank`` on its node, ``enabled`` when a
    process group is up (launched by torchrun), and the ``device`` it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False
    device: torch.device = torch.device("cpu")


def init_distributed(device: torch.device) -> DistContext:
    """Join torchrun's process group if ``RANK`` and ``WORLD_SIZE`` are set (NCCL with CUDA, each
    process on GPU ``LOCAL_RANK`` of its node; gloo on the CPU), else a 1-process context."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistContext(device=device)
    rank, world, local_rank = (int(os.environ.get(k, 0)) for k in ("RANK", "WORLD_SIZE",
                                                                    "LOCAL_RANK"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        # a rank that dies or hangs should not keep the others waiting the 30-minute default
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(minutes=10))
    return DistContext(rank, world, local_rank, True, device)


def is_main_process() -> bool:
    """True on rank 0 or without a process group: the one process that prints and writes files."""
    return not dist.is_initialized() or dist.get_rank() == 0


def all_reduce(values: list[float], device: torch.device, op: str) -> list[float]:
    """Element-wise ``"sum"`` or ``"max"`` of ``values`` over all ranks (unchanged without a
    process group). The max lets all ranks take the same branch: a rank that stopped alone would
    leave the others waiting in the next collective."""
    if not dist.is_initialized():
        return values
    # float64: sums of per-sample losses over a large test set keep their digits
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor.tolist()


def all_gather(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` without a process group."""
    if not dist.is_initialized():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if one is up."""
    if dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch(global_batch: int, context: DistContext, flag: str) -> int:
    """``global_batch / world_size``: ``-b`` is the global batch, as under the authors'
    DataParallel, so the same command trains the same way on any number of GPUs."""
    if global_batch % context.world_size:
        raise UsageError(f"{flag} {global_batch} is the global batch and must be divisible by "
                         f"the {context.world_size} processes")
    return global_batch // context.world_size


class ResumableSampler(DistributedSampler):
    """DistributedSampler that leaves out the first ``skip`` indices of this rank's epoch: a run
    resumed inside an epoch goes on with the batches the interrupted one had not reached (the
    order itself follows from the seed and the epoch)."""

    skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return super().__len__() - self.skip
