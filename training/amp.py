"""``--amp``: mixed precision for the synapses (convolutions, linear layers), the spiking scans
kept in float32 by the core.

CUDA uses bfloat16 where the GPU supports it (no loss scaling needed), else float16 with a
gradient scaler. The CPU runs bfloat16 autocast too: it works with the core and keeps one code
path testable without a GPU, though it is rarely faster there.
"""
from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

__all__ = ["Precision", "make_precision"]


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
    """float32 unless ``amp``; with ``amp``, bfloat16 (CPU, recent GPUs) or float16 + scaler."""
    if not amp:
        return Precision(device.type)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return Precision(device.type, torch.float16, torch.amp.GradScaler("cuda"))
    return Precision(device.type, torch.bfloat16)
