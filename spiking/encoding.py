"""Input encoding module (docs/algorithm.md, *Input encoding*)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .functional import poisson_encode

__all__ = ["PoissonEncoder"]


class PoissonEncoder(nn.Module):
    """Images ``[B, C, H, W]`` -> signed Bernoulli spike train ``[T, B, C, H, W]``.

    Args:
        time_steps: T, the number of steps each image is presented for.
        scale: the factor a of the rate code (1 for CIFAR-10/SVHN, 0.5 for MNIST).
        generator: optional ``torch.Generator`` for reproducible draws.
    """

    def __init__(self, time_steps: int, scale: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if time_steps < 1:
            raise ValueError(f"time_steps must be at least 1, got {time_steps}")
        self.time_steps = time_steps
        self.scale = scale
        self.generator = generator

    def forward(self, images: Tensor) -> Tensor:
        return poisson_encode(images, self.time_steps, self.scale, self.generator)

    def extra_repr(self) -> str:
        return f"time_steps={self.time_steps}, scale={self.scale}"
