"""One training epoch and one evaluation pass: the loss of SPEC section 4 over time-major spikes.

Per mini-batch: images ``[B, C, H, W]`` -> ``encoder`` -> spikes ``[T, B, C, H, W]`` -> ``model``
-> output ``[B, K]``; loss = sum over batch and classes of ``(output - onehot)^2``; one backward
through all T steps (BPTT), one SGD step. Cross-entropy of the output is computed for the log only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .amp import Precision
from .distributed import all_reduce_sum, any_rank
from .metrics import AverageMeter, accuracy
from .progress import EpochProgress

__all__ = ["EpochStats", "EvalMonitor", "NonFiniteLoss", "evaluate", "spike_loss",
           "train_one_epoch"]


class NonFiniteLoss(ArithmeticError):
    """The training loss became NaN or infinite at 1-based ``step`` of the epoch (on any rank)."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"loss became {value} at step {step}")
        self.step, self.value = step, value


def spike_loss(output: Tensor, target: Tensor) -> Tensor:
    """The authors' loss: ``sum((output - onehot(target))^2)`` over batch and classes.

    Args:
        output: ``[B, K]`` network output.
        target: ``[B]`` labels.
    """
    output = output.float()  # under autocast the output layer may be bf16/fp16; sum in float32
    onehot = F.one_hot(target, output.shape[1]).to(output.dtype)
    return F.mse_loss(output, onehot, reduction="sum")


@dataclass(frozen=True)
class EpochStats:
    """Averages over one pass. ``loss`` is the summed-MSE loss per sample; ``top1``/``top5`` in
    percent; ``samples_per_s`` counts images (each presented for T steps)."""

    loss: float
    cross_entropy: float
    top1: float
    top5: float
    samples: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


class EvalMonitor(Protocol):
    """What :func:`evaluate` calls on an optional monitor (e.g. spike statistics).

    ``attach(model)`` before the first batch (register forward hooks there), ``observe(output,
    target)`` after every batch with the ``[B, K]`` output and ``[B]`` labels, ``detach()``
    after the pass, also when it fails.
    """

    def attach(self, model: nn.Module) -> None: ...

    def observe(self, output: Tensor, target: Tensor) -> None: ...

    def detach(self) -> None: ...


class _Meters:
    def __init__(self) -> None:
        self.loss, self.ce = AverageMeter("loss"), AverageMeter("ce")
        self.top1, self.top5 = AverageMeter("top1"), AverageMeter("top5")
        self.start = time.perf_counter()

    def update(self, output: Tensor, target: Tensor, loss: Tensor) -> tuple[float, float]:
        n = target.shape[0]
        top1, top5 = accuracy(output, target, (1, 5))
        loss_per_image = loss.item() / n
        self.loss.update(loss_per_image, n)
        self.ce.update(F.cross_entropy(output.detach().float(), target).item(), n)
        self.top1.update(top1, n)
        self.top5.update(top5, n)
        return loss_per_image, top1

    def stats(self, device: torch.device) -> EpochStats:
        """Sample-weighted averages over all ranks (this process's alone when not distributed)."""
        meters = (self.loss, self.ce, self.top1, self.top5)
        *sums, count = all_reduce_sum([m.sum for m in meters] + [self.loss.count], device)
        averages = [s / count if count else 0.0 for s in sums]
        return EpochStats(*averages, int(count), time.perf_counter() - self.start)


def train_one_epoch(model: nn.Module, encoder: nn.Module, loader: DataLoader,
                    optimizer: torch.optim.Optimizer, device: torch.device,
                    progress: EpochProgress | None = None, world_size: int = 1,
                    precision: Precision | None = None) -> EpochStats:
    """One pass of spike-based BPTT over ``loader`` (images ``[B, C, H, W]``, labels ``[B]``).

    ``encoder`` maps images to spikes ``[T, B, C, H, W]`` (fresh draws every step; dropout masks
    are drawn inside ``model``, both from torch's global generator).

    Under DistributedDataParallel (``world_size`` processes, ``model`` wrapped) each rank's loss
    is multiplied by ``world_size`` before the backward: DDP averages the ranks' gradients, and
    the average of ``world_size * (sum over this rank's samples)`` is the gradient of the
    authors' sum over the whole global batch.

    Raises:
        NonFiniteLoss: the loss is NaN or infinite on any rank; checked before the update, so
            the weights are those after the last good step.
    """
    precision = precision or Precision(device.type)
    model.train()
    meters = _Meters()
    for step, (images, target) in enumerate(loader, 1):
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        with precision.autocast():
            output = model(encoder(images))
            loss = spike_loss(output, target)
        if any_rank(not torch.isfinite(loss).item(), device):
            raise NonFiniteLoss(step, loss.item())
        optimizer.zero_grad(set_to_none=True)
        _backward_and_step(loss * world_size if world_size > 1 else loss, optimizer, precision)
        batch_loss, batch_top1 = meters.update(output, target, loss)
        if progress is not None:
            progress.update(target.shape[0], batch_loss, batch_top1)
    return meters.stats(device)


def _backward_and_step(loss: Tensor, optimizer: torch.optim.Optimizer,
                       precision: Precision) -> None:
    if precision.scaler is None:
        loss.backward()
        optimizer.step()
        return
    precision.scaler.scale(loss).backward()
    precision.scaler.step(optimizer)
    precision.scaler.update()


@torch.no_grad()
def evaluate(model: nn.Module, encoder: nn.Module, loader: DataLoader, device: torch.device,
             monitor: EvalMonitor | None = None,
             progress: EpochProgress | None = None,
             precision: Precision | None = None) -> EpochStats:
    """Test ``model`` on ``loader`` without dropout; nothing is learned.

    Give ``encoder`` its own seeded generator (as the engine does) for an accuracy that is
    reproducible for the same weights, data and device.

    Args:
        model: maps spikes ``[T, B, C, H, W]`` to output ``[B, K]``.
        encoder: maps images ``[B, C, H, W]`` to spikes ``[T, B, C, H, W]``.
        loader: yields images ``[B, C, H, W]`` and labels ``[B]``.
        device: where the batches go.
        monitor: optional :class:`EvalMonitor`, e.g. to count spikes per layer.
        progress: optional progress display.
        precision: optional autocast (``--amp``).

    Under DDP give each rank its share of the test set; the returned averages are over all
    ranks' images.
    """
    precision = precision or Precision(device.type)
    model.eval()
    meters = _Meters()
    if monitor is not None:
        monitor.attach(model)
    try:
        for images, target in loader:
            images = images.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            with precision.autocast():
                output = model(encoder(images))
            batch_loss, batch_top1 = meters.update(output, target, spike_loss(output, target))
            if monitor is not None:
                monitor.observe(output, target)
            if progress is not None:
                progress.update(target.shape[0], batch_loss, batch_top1)
    finally:
        if monitor is not None:
            monitor.detach()
    return meters.stats(device)
