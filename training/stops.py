"""What ends a run early: SIGINT/SIGTERM and the ``--save-every`` timer, answered between
training steps, and the per-layer spike counts that tell a network gone silent.

The engine decides what to do (write a checkpoint inside the epoch, stop, warn); this module
only notices.
"""
from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from spiking import LIFNeuron, OutputIntegrator, PoolingNeuron

from .distributed import all_reduce_sum, is_main_process
from .loop import EpochMeters

__all__ = ["AfterStep", "Interrupted", "Interrupts", "SpikeCounts"]

AfterStep = Callable[[int, int], None]
_SAVE_NOW = 1  # a request code below every signal number


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run, after its checkpoint was written (unless a second signal
    cut that short); ``status`` is the exit status of a process killed by that signal (130, 143),
    ``step`` the steps done in the epoch (0 at an epoch's end)."""

    def __init__(self, signum: int, step: int = 0) -> None:
        super().__init__(signal.Signals(signum).name)
        self.status, self.step = 128 + signum, step


class Interrupts:
    """SIGINT/SIGTERM and the ``--save-every`` timer, turned into requests that the training loop
    answers after a step (:class:`training.loop.StepControl`); a second signal stops at once.

    The engine sets ``epoch`` and ``on_save(step, meters)`` (what writes a checkpoint inside the
    epoch) at the start of every epoch; ``after_step(epoch, step)`` is the caller's hook.
    """

    def __init__(self, save_every_minutes: float, after_step: AfterStep | None) -> None:
        self.signum = 0
        self.period = save_every_minutes * 60
        self.after_step = after_step
        self.epoch = 0
        self.on_save: Callable[[int, EpochMeters], None] = lambda step, meters: None
        self.last_save = time.monotonic()
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum:
            if is_main_process():
                print("interrupted again: stopping now, without a checkpoint of this epoch",
                      flush=True)
            raise Interrupted(signum)
        self.signum = signum

    def request(self) -> int:
        due = self.period > 0 and time.monotonic() - self.last_save >= self.period
        return self.signum or (_SAVE_NOW if due and is_main_process() else 0)

    def step_done(self, step: int, meters: EpochMeters, request: int) -> None:
        if self.after_step is not None:
            self.after_step(self.epoch, step)
        if request:
            self.on_save(step, meters)
            self.last_save = time.monotonic()
        if request > _SAVE_NOW:
            raise Interrupted(request, step)


class SpikeCounts:
    """Spikes emitted by every hidden LIF and pooling layer, and nonzero outputs of the output
    layer, summed over a training epoch by forward hooks (one count per layer and chunk, kept on
    the device: no synchronisation in the hot loop)."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        kinds = (LIFNeuron, PoolingNeuron, OutputIntegrator)
        self.layers = {name: m for name, m in model.named_modules() if isinstance(m, kinds)}
        self.device = device
        self.handles: list[Any] = []
        self.reset()

    def reset(self, counts: dict[str, int] | None = None) -> None:
        self.counts = {name: torch.tensor((counts or {}).get(name, 0), device=self.device)
                       for name in self.layers}

    def __enter__(self) -> SpikeCounts:
        for name, module in self.layers.items():
            self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _hook(self, name: str) -> Callable:
        def count(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            self.counts[name] += torch.count_nonzero(output.detach())
        return count

    def local(self) -> dict[str, int]:
        """This process's counts so far."""
        return {name: int(count) for name, count in self.counts.items()}

    def total(self) -> dict[str, int]:
        """The counts summed over all ranks."""
        return dict(zip(self.counts, map(int, all_reduce_sum(
            [float(c) for c in self.counts.values()], self.device))))
