"""Dropout whose mask is drawn once per forward and held over all time steps (docs/algorithm.md,
*Dropout*)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["TimeHeldDropout"]


class TimeHeldDropout(nn.Module):
    """Multiply spikes ``[T, B, ...]`` by one mask ``[B, ...]`` of 0 or ``1/(1-p)`` for all T steps.

    Holding the mask over time keeps a dropped neuron silent for the whole presentation of an
    image, as in the authors' scripts. The mask drawn at the first call is kept for later chunks
    of the same sequence until :meth:`reset_state`. Identity in eval mode or when ``p == 0``.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.mask: Tensor | None = None

    def draw_mask(self, spikes: Tensor) -> Tensor:
        """Draw the ``[B, ...]`` mask for ``spikes`` ``[T, B, ...]`` (same device and dtype)."""
        keep = torch.full(spikes.shape[1:], 1.0 - self.p, dtype=spikes.dtype, device=spikes.device)
        return torch.bernoulli(keep).div_(1.0 - self.p)

    def forward(self, spikes: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return spikes
        if self.mask is None:
            self.mask = self.draw_mask(spikes)
        return spikes * self.mask

    def reset_state(self) -> None:
        self.mask = None

    def extra_repr(self) -> str:
        return f"p={self.p}"
