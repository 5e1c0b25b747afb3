"""One training epoch and one evaluation pass, with what they use: the loss, SGD and its
learning-rate schedule, and the ``--amp`` precision (the algorithm: docs/algorithm.md).

Per mini-batch: images ``[B, C, H, W]`` -> ``encoder`` -> spikes ``[T, B, C, H, W]`` -> ``model``
-> output ``[B, K]``; loss = sum over batch and classes of ``(output - onehot)^2``; one backward
through all T steps (BPTT), one SGD step. Cross-entropy of the output is computed for the log only.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .distributed import all_reduce_max, all_reduce_sum
from .experiment import Experiment
from .metrics import AverageMeter, EpochProgress, accuracy

__all__ = ["EpochMeters", "EpochStats", "EvalMonitor", "NonFiniteLoss", "Precision",
           "StepControl", "adjust_learning_rate", "build_optimizer", "evaluate", "learning_rate",
           "make_precision", "schedule_state", "spike_loss", "train_one_epoch"]


def spike_loss(output: Tensor, target: Tensor) -> Tensor:
    """The authors' loss: ``sum((output - onehot(target))^2)`` over batch and classes.

    Args:
        output: ``[B, K]`` network output.
        target: ``[B]`` labels.
    """
    output = output.float()  # under autocast the output layer may be bf16/fp16; sum in float32
    onehot = F.one_hot(target, output.shape[1]).to(output.dtype)
    return F.mse_loss(output, onehot, reduction="sum")


def build_optimizer(model: nn.Module, settings: Experiment) -> torch.optim.SGD:
    """Plain SGD over all weights: ``lr``, ``momentum`` (0 in the authors' runs), weight decay."""
    return torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                           weight_decay=settings.weight_decay)


def learning_rate(epoch: int, base_lr: float, milestones: Sequence[int], gamma: float) -> float:
    """The rate for 0-based ``epoch``: ``base_lr * gamma ** (milestones reached)``.

    A pure function of the epoch (like MultiStepLR's closed form), so a resumed run gets exactly
    the rate an uninterrupted one had.
    """
    return base_lr * gamma ** sum(1 for m in milestones if epoch >= m)


def adjust_learning_rate(optimizer: torch.optim.Optimizer, epoch: int,
                         settings: Experiment) -> float:
    """Set every parameter group's rate for ``epoch`` (call at the epoch's start); return it."""
    lr = learning_rate(epoch, settings.lr, settings.milestones, settings.lr_gamma)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def schedule_state(settings: Experiment, next_epoch: int) -> dict[str, Any]:
    """The schedule and its position, stored in checkpoints beside the optimiser; a resumed run
    compares it with its own (the command line decides)."""
    return {"base_lr": settings.lr, "milestones": list(settings.milestones),
            "gamma": settings.lr_gamma, "next_epoch": next_epoch,
            "next_lr": learning_rate(next_epoch, settings.lr, settings.milestones,
                                     settings.lr_gamma)}


@dataclass
class Precision:
    """How the forward pass runs: ``dtype`` of autocast (``None`` = full float32) on
    ``device_type``, and the float16 gradient ``scaler`` if one is needed."""

    device_type: str
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    def autocast(self) -> AbstractContextManager:
        """The context the forward pass and loss run in."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def describe(self) -> str:
        if self.dtype is None:
            return "float32"
        name = str(self.dtype).removeprefix("torch.")
        return f"amp {name}" + (" with grad scaler" if self.scaler is not None else "")


def make_precision(amp: bool, device: torch.device) -> Precision:
    """float32 unless ``amp``. With ``amp`` the synapses run in bfloat16 (CPU, recent GPUs; no
    loss scaling needed), or float16 with a gradient scaler on GPUs without bfloat16; the
    spiking scans stay float32 (the core keeps them so)."""
    if not amp:
        return Precision(device.type)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return Precision(device.type, torch.float16, torch.amp.GradScaler("cuda"))
    return Precision(device.type, torch.bfloat16)


class NonFiniteLoss(ArithmeticError):
    """The training loss became NaN or infinite at 1-based ``step`` of the epoch (on any rank)."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"loss became {value} at step {step}")
        self.step, self.value = step, value


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


class EpochMeters:
    """This process's sums over a pass; ``state`` (from :meth:`state`) continues a pass that a
    mid-epoch checkpoint interrupted."""

    def __init__(self, state: Sequence[float] | None = None) -> None:
        self.loss, self.ce = AverageMeter("loss"), AverageMeter("ce")
        self.top1, self.top5 = AverageMeter("top1"), AverageMeter("top5")
        *sums, count, seconds = state or (0.0,) * 6
        for meter, total in zip(self._meters, sums):
            meter.sum, meter.count = total, int(count)
        self.start = time.perf_counter() - seconds

    @property
    def _meters(self) -> tuple[AverageMeter, ...]:
        return self.loss, self.ce, self.top1, self.top5

    def state(self) -> list[float]:
        """The four sums, the image count and the seconds so far."""
        return [m.sum for m in self._meters] + [self.loss.count,
                                                time.perf_counter() - self.start]

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
        *sums, count = all_reduce_sum([m.sum for m in self._meters] + [self.loss.count], device)
        averages = [s / count if count else 0.0 for s in sums]
        return EpochStats(*averages, int(count), time.perf_counter() - self.start)


class StepControl(Protocol):
    """What :func:`train_one_epoch` asks between steps (the engine's interrupts and checkpoints).

    ``request()``: this process's pending request (0 = none; the engine's codes otherwise),
    read before each update; the largest over all ranks is passed, after the update, to
    ``step_done(step, meters, request)``, which may save, or raise to end the epoch.
    """

    def request(self) -> int: ...

    def step_done(self, step: int, meters: EpochMeters, request: int) -> None: ...


def train_one_epoch(model: nn.Module, encoder: nn.Module, loader: DataLoader,
                    optimizer: torch.optim.Optimizer, device: torch.device,
                    progress: EpochProgress | None = None, world_size: int = 1,
                    precision: Precision | None = None, meters: EpochMeters | None = None,
                    control: StepControl | None = None, first_step: int = 1) -> EpochStats:
    """One pass of spike-based BPTT over ``loader`` (images ``[B, C, H, W]``, labels ``[B]``).

    ``encoder`` maps images to spikes ``[T, B, C, H, W]`` (fresh draws every step; dropout masks
    are drawn inside ``model``, both from torch's global generator). A resumed epoch passes the
    interrupted pass's ``meters``, a ``loader`` over the remaining batches and their 1-based
    ``first_step``.

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
    meters = meters or EpochMeters()
    for step, (images, target) in enumerate(loader, first_step):
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        with precision.autocast():
            output = model(encoder(images))
            loss = spike_loss(output, target)
        # one collective per step: any rank's non-finite loss, and the largest request
        bad, request = all_reduce_max([float(not torch.isfinite(loss).item()),
                                       float(control.request() if control else 0)], device)
        if bad:
            raise NonFiniteLoss(step, loss.item())
        optimizer.zero_grad(set_to_none=True)
        _backward_and_step(loss * world_size if world_size > 1 else loss, optimizer, precision)
        batch_loss, batch_top1 = meters.update(output, target, loss)
        if progress is not None:
            progress.update(target.shape[0], batch_loss, batch_top1)
        if control is not None:
            control.step_done(step, meters, int(request))
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


class EvalMonitor(Protocol):
    """What :func:`evaluate` calls on an optional monitor (e.g. spike statistics).

    ``attach(model)`` before the first batch (register forward hooks there), ``observe(output,
    target)`` after every batch with the ``[B, K]`` output and ``[B]`` labels, ``detach()``
    after the pass, also when it fails.
    """

    def attach(self, model: nn.Module) -> None: ...

    def observe(self, output: Tensor, target: Tensor) -> None: ...

    def detach(self) -> None: ...


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
    meters = EpochMeters()
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
