"""Running averages, top-k accuracy and the per-epoch CSV (pytorch/examples conventions)."""
from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["AverageMeter", "CSV_FIELDS", "MetricsLog", "ProgressMeter", "accuracy"]


class AverageMeter:
    """Current value and running, sample-weighted average of one quantity."""

    def __init__(self, name: str, fmt: str = ":f") -> None:
        self.name = name
        self.fmt = fmt
        self.reset()

    def reset(self) -> None:
        self.val = 0.0
        self.avg = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1) -> None:
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count

    def __str__(self) -> str:
        return ("{name} {val" + self.fmt + "} ({avg" + self.fmt + "})").format(**self.__dict__)


class ProgressMeter:
    """Formats ``prefix [batch/total] meter meter ...`` lines."""

    def __init__(self, num_batches: int, meters: Sequence[AverageMeter], prefix: str = "") -> None:
        digits = len(str(num_batches))
        self.batch_fmt = "[{:" + str(digits) + "d}/" + str(num_batches) + "]"
        self.meters = meters
        self.prefix = prefix

    def line(self, batch: int) -> str:
        """The progress line after ``batch`` batches (1-based)."""
        return "  ".join([self.prefix + self.batch_fmt.format(batch), *map(str, self.meters)])


def accuracy(output: Tensor, target: Tensor, topk: Sequence[int] = (1,)) -> list[float]:
    """Percentage of ``target`` labels among the top-k entries of ``output`` for each k.

    Args:
        output: ``[B, K]`` network outputs (any monotone score).
        target: ``[B]`` labels.
        topk: the k values; each is capped at K.

    Returns:
        One percentage (0..100) per k.
    """
    with torch.no_grad():
        maxk = min(max(topk), output.shape[1])
        top = output.topk(maxk, dim=1).indices
        hits = top.eq(target[:, None])
        return [hits[:, :min(k, maxk)].any(dim=1).float().mean().item() * 100.0 for k in topk]


CSV_FIELDS = ("epoch", "lr", "train_loss", "train_ce", "train_top1", "train_top5", "test_loss",
              "test_ce", "test_top1", "test_top5", "train_samples_per_s", "epoch_seconds")


class MetricsLog:
    """Per-epoch metrics as CSV rows (``CSV_FIELDS``, epoch numbered from 1).

    On resume the file is rewritten with only the rows before ``first_epoch``, so epochs redone
    after a crash appear once.
    """

    def __init__(self, path: str, first_epoch: int) -> None:
        self.path = path
        kept: list[dict[str, str]] = []
        if first_epoch > 0 and os.path.exists(path):
            with open(path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["epoch"]) <= first_epoch]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, CSV_FIELDS)
            writer.writeheader()
            writer.writerows(kept)

    def append(self, row: Mapping[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, CSV_FIELDS).writerow(row)
