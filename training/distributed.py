"""DistributedDataParallel plumbing for runs under ``torchrun``: the process group, this process's
rank, the rank-0 rule for output, reductions and the resumable sampler. Without a process group (a
plain ``python script.py``) every helper acts for one process, so the engine calls the same code."""
from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from .experiment import UsageError


def init_distributed(device: torch.device) -> torch.device:
    """Join torchrun's process group if ``RANK`` and ``WORLD_SIZE`` are set (NCCL with CUDA, each
    process on GPU ``LOCAL_RANK`` of its node; gloo on the CPU); returns this process's device."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # a rank that dies or hangs should not keep the others waiting the 30-minute default
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(minutes=10))
    return device


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 or without a process group: the one process that prints and writes files."""
    return rank() == 0


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


def per_rank_batch(global_batch: int, processes: int) -> int:
    """``global_batch / processes``: ``-b`` is the global batch, as under the authors'
    DataParallel, so the same command trains the same way on any number of GPUs."""
    if global_batch % processes:
        raise UsageError(f"-b/--batch-size {global_batch} is the global batch and must be "
                         f"divisible by the {processes} processes")
    return global_batch // processes


class ResumableSampler(DistributedSampler):
    """DistributedSampler that leaves out the first ``skip`` indices of this rank's epoch: a run
    resumed inside an epoch goes on with the batches the interrupted one had not reached (the
    order itself follows from the seed and the epoch)."""

    skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return super().__len__() - self.skip
