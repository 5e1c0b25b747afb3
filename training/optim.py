"""Optimiser and learning-rate schedule of SPEC section 4 and 9."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .experiment import Experiment

__all__ = ["adjust_learning_rate", "build_optimizer", "learning_rate", "schedule_state"]


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
    """The schedule's position, stored in checkpoints beside the optimiser."""
    return {"base_lr": settings.lr, "milestones": list(settings.milestones),
            "gamma": settings.lr_gamma, "next_epoch": next_epoch,
            "next_lr": learning_rate(next_epoch, settings.lr, settings.milestones,
                                     settings.lr_gamma)}
