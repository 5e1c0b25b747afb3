"""One training epoch and one evaluation pass, with what they use: the loss, SGD and its
learning-rate schedule, and the ``--amp`` precision (the algorithm: docs/algorithm.md). Per
mini-batch: images ``[B, C, H, W]`` -> ``encoder`` -> spikes ``[T, B, C, H, W]`` -> ``model`` ->
output ``[B, K]`` -> summed-MSE loss -> one backward through all T steps (BPTT) -> one SGD step.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .distributed import all_reduce
from .experiment import Experiment
from .metrics import EpochMeters, EpochProgress, EpochStats


def spike_loss(output: Tensor, target: Tensor) -> Tensor:
    """The authors' loss: ``sum((output - onehot(target))^2)`` over the batch and classes of
    ``output`` ``[B, K]`` and labels ``target`` ``[B]``."""
    output = output.float()  # under autocast the output layer may be bf16/fp16; sum in float32
    return F.mse_loss(output, F.one_hot(target, output.shape[1]).to(output.dtype), reduction="sum")


def build_optimizer(model: nn.Module, settings: Experiment) -> torch.optim.SGD:
    """Plain SGD over all weights: ``lr``, ``momentum`` (0 in the authors' runs), weight decay."""
    return torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                           weight_decay=settings.weight_decay)


def learning_rate(epoch: int, base_lr: float, milestones: Sequence[int], gamma: float) -> float:
    """The rate of 0-based ``epoch``: ``base_lr * gamma ** (milestones reached)``, a pure function
    of the epoch (MultiStepLR's closed form), so a resumed run gets the rate an uninterrupted
    one had."""
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


def set_tf32(enabled: bool) -> None:
    """TensorFloat-32 in CUDA matrix products and cuDNN convolutions, set rather than inherited
    from PyTorch's defaults (which differ: matmul off, cuDNN on)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


@contextlib.contextmanager
def host_waits_refused(enabled: bool) -> Iterator[None]:
    """With ``enabled``, CUDA raises at any operation that makes the host wait for the GPU
    (``torch.cuda.set_sync_debug_mode("error")``), until the block ends."""
    if not enabled:
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


class Precision:
    """How the forward pass runs: float32 unless ``amp``. With ``amp`` the synapses run in
    bfloat16 (CPU, recent GPUs; no loss scaling needed), or float16 with a gradient scaler on
    GPUs without bfloat16; the spiking scans stay float32 (the core keeps them so). ``scaler``
    is disabled, passing everything through, unless float16. ``tf32``: whether CUDA's float32
    products may round their inputs to TensorFloat-32 (:func:`set_tf32`, by the run's set-up)."""

    def __init__(self, device_type: str, amp: bool = False, tf32: bool = False) -> None:
        float16 = amp and device_type == "cuda" and not torch.cuda.is_bf16_supported()
        self.device_type = device_type
        self.dtype = None if not amp else torch.float16 if float16 else torch.bfloat16
        self.scaler = torch.amp.GradScaler(device_type, enabled=float16)
        self.tf32 = tf32

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def describe(self) -> str:
        tf32 = f", TF32 {'on' if self.tf32 else 'off'}"
        if self.dtype is None:
            return "float32" + tf32
        scaled = " with grad scaler" if self.scaler.is_enabled() else ""
        return f"amp {str(self.dtype).removeprefix('torch.')}{scaled}{tf32}"


class NonFiniteLoss(ArithmeticError):
    """The training loss became NaN or infinite at 1-based ``step`` of the epoch (on any rank)."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"loss became {value} at step {step}")
        self.step, self.value = step, value


def train_one_epoch(model: nn.Module, encoder: nn.Module, loader: DataLoader,
                    optimizer: torch.optim.Optimizer, device: torch.device,
                    progress: EpochProgress | None = None, world_size: int = 1,
                    precision: Precision | None = None, meters: EpochMeters | None = None,
                    after_step: Callable[[int, EpochMeters], None] | None = None,
                    first_step: int = 1, sync_debug: bool = False) -> EpochStats:
    """One pass of spike-based BPTT over ``loader`` (images ``[B, C, H, W]``, labels ``[B]``).

    ``encoder`` draws fresh spikes ``[T, B, C, H, W]`` every step and ``model`` its dropout
    masks, both from torch's global generator. A resumed epoch passes the interrupted pass's
    ``meters``, a ``loader`` over the remaining batches and their 1-based ``first_step``.
    ``after_step(step, meters)`` runs after each update (it may save or stop the run). A NaN or
    infinite loss on any rank raises :class:`NonFiniteLoss` before the update. ``sync_debug``:
    the forward, backward and update refuse to make the host wait (:func:`host_waits_refused`;
    the loss check and the meters read values on purpose).
    """
    precision = precision or Precision(device.type)
    meters = meters or EpochMeters()
    model.train()
    for step, batch in enumerate(loader, first_step):
        images, target = (t.to(device, non_blocking=True) for t in batch)
        with host_waits_refused(sync_debug), precision.autocast():
            output = model(encoder(images))
            loss = spike_loss(output, target)
        if all_reduce([float(not torch.isfinite(loss).item())], device, "max")[0]:  # any rank's
            raise NonFiniteLoss(step, loss.item())
        optimizer.zero_grad(set_to_none=True)
        with host_waits_refused(sync_debug):
            # DDP averages the ranks' gradients: the average of world_size * (this rank's sum)
            # is the gradient of the authors' sum over the whole global batch
            precision.scaler.scale(loss * world_size).backward()
            precision.scaler.step(optimizer)
            precision.scaler.update()
        batch_loss, batch_top1 = meters.update(output, target, loss)
        if progress is not None:
            progress.update(target.shape[0], batch_loss, batch_top1)
        if after_step is not None:
            after_step(step, meters)
    return meters.stats(device)


@torch.no_grad()
def evaluate(model: nn.Module, encoder: nn.Module, loader: DataLoader, device: torch.device,
             monitor: Any = None, progress: EpochProgress | None = None,
             precision: Precision | None = None,
             before_batch: Callable[[int], None] | None = None) -> EpochStats:
    """Test ``model`` on ``loader`` without dropout; nothing is learned. An optional ``monitor``
    (e.g. :class:`analysis.SpikeMonitor`) gets ``attach(model)`` before the first batch,
    ``observe(output, target)`` after each (``[B, K]`` output, ``[B]`` labels) and ``detach()``
    after the pass, also when it fails. ``before_batch(index)`` (0-based) runs before each batch
    and may stop the pass by raising. Under DDP each rank passes its share of the test set;
    the averages are over all ranks' images.
    """
    precision = precision or Precision(device.type)
    meters = EpochMeters()
    model.eval()
    if monitor is not None:
        monitor.attach(model)
    try:
        for index, batch in enumerate(loader):
            if before_batch is not None:
                before_batch(index)
            images, target = (t.to(device, non_blocking=True) for t in batch)
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
