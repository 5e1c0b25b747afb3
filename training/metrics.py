"""What a run measures and shows: top-k accuracy, running averages, the progress display, and the
per-epoch record that feeds the CSV, the epoch summary line and the final table.

A new per-epoch metric is one field of :class:`EpochRecord` (with its label and format), plus
the line that computes it in the engine.
"""
from __future__ import annotations

import csv
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TextIO

import torch
from torch import Tensor
from tqdm import tqdm

__all__ = ["CSV_FIELDS", "AverageMeter", "EpochProgress", "EpochRecord", "MetricsLog",
           "ProgressMeter", "accuracy", "format_epoch_table", "format_text_table"]


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


class EpochProgress:
    """Shows loss, top-1 and throughput while one pass over a loader runs.

    On a terminal (``bar_stream`` is a TTY) it draws a tqdm bar on ``bar_stream``; otherwise, as
    in a log file or under a batch scheduler, it writes a plain line to ``line_stream`` every
    ``print_freq`` batches and after the last one, so logs carry no carriage-return clutter.
    ``done`` batches were run before (a resumed epoch) and count towards ``total``.
    """

    def __init__(self, total: int, description: str, print_freq: int = 10,
                 bar_stream: TextIO | None = None, line_stream: TextIO | None = None,
                 done: int = 0) -> None:
        self.bar_stream = bar_stream or sys.stderr
        self.line_stream = line_stream or sys.stdout
        self.total = total
        self.print_freq = print_freq
        self.loss = AverageMeter("Loss", ":.4f")
        self.top1 = AverageMeter("Prec@1", ":6.2f")
        self.meter = ProgressMeter(total, [self.loss, self.top1], prefix=f"{description} ")
        self.samples = 0
        self.batches = done
        self.start = time.perf_counter()
        self.bar = (tqdm(total=total, initial=done, desc=description, unit="batch",
                         file=self.bar_stream, dynamic_ncols=True, leave=False)
                    if _isatty(self.bar_stream) else None)

    def update(self, batch_size: int, loss: float, top1: float) -> None:
        """Record one finished batch (``loss`` per sample, ``top1`` in percent)."""
        self.loss.update(loss, batch_size)
        self.top1.update(top1, batch_size)
        self.samples += batch_size
        self.batches += 1
        rate = self.samples / max(time.perf_counter() - self.start, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix({"loss": f"{self.loss.avg:.4f}", "top1": f"{self.top1.avg:.2f}",
                                  "samples/s": f"{rate:.1f}"}, refresh=False)
            self.bar.update(1)
        elif self.batches % self.print_freq == 0 or self.batches == self.total:
            print(f"{self.meter.line(self.batches)}  {rate:.1f} samples/s",
                  file=self.line_stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _isatty(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", None)) and stream.isatty()


def _metric(label: str, fmt: str = ".4f", unit: str = "", table: str = "", section: str = "",
            summary: bool = True) -> Any:
    """A field of :class:`EpochRecord`: its ``label`` and ``fmt``/``unit`` in the summary line
    (shown unless ``summary`` is False; consecutive fields of one ``section`` share a part of
    the line), its column header in the final table (``table``; empty = not in the table)."""
    return field(metadata=dict(label=label, fmt=fmt, unit=unit, table=table, section=section,
                               summary=summary))


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's metrics: a CSV row, the summary line and a row of the final table.

    Losses are the summed-MSE loss per image, CE the cross-entropy of the output (logged only),
    accuracies in percent, ``epoch`` numbered from 1.
    """

    epoch: int = _metric("Epoch", "d", table="epoch")
    lr: float = _metric("lr", ".3g", table="lr")
    train_loss: float = _metric("loss", section="train", table="train loss")
    train_ce: float = _metric("CE", section="train")
    train_top1: float = _metric("top-1", ".2f", "%", section="train", table="train top-1")
    train_top5: float = _metric("top-5", ".2f", "%", section="train", summary=False)
    test_loss: float = _metric("loss", section="test", table="test loss")
    test_ce: float = _metric("CE", section="test")
    test_top1: float = _metric("top-1", ".2f", "%", section="test", table="test top-1")
    test_top5: float = _metric("top-5", ".2f", "%", section="test", table="test top-5")
    train_samples_per_s: float = _metric("", ".1f", " samples/s")
    epoch_seconds: float = _metric("", ".1f", " s", table="seconds")

    def row(self) -> dict[str, Any]:
        """The CSV row (and checkpoint history entry): floats to 6 significant digits, so the
        file shows 10.0 rather than 10.000000029802322."""
        return {k: float(f"{v:.6g}") if isinstance(v, float) else v
                for k, v in asdict(self).items()}

    def summary(self, epochs: int, best: float) -> str:
        """``Epoch 3/10 | lr 0.0085 | train loss ... | test loss ... | ... | best 98.10%``."""
        parts, section = [], None
        for f in fields(self):
            meta, value = f.metadata, getattr(self, f.name)
            if not meta["summary"]:
                continue
            text = f"{value:{meta['fmt']}}{meta['unit']}"
            if f.name == "epoch":
                text += f"/{epochs}"
            prefix = meta["section"] or None
            item = " ".join(filter(None, (meta["label"], text)))
            if prefix is not None and prefix == section:
                parts[-1] += f" {item}"
            else:
                parts.append(" ".join(filter(None, (prefix, item))))
            section = prefix
        return " | ".join([*parts, f"best {best:.2f}%"])


CSV_FIELDS = tuple(f.name for f in fields(EpochRecord))


def format_epoch_table(history: Sequence[Mapping[str, Any]]) -> str:
    """The end-of-run table of ``history`` (CSV rows, e.g. a checkpoint's) in the columns that
    :class:`EpochRecord` marks for it."""
    columns = [f for f in fields(EpochRecord) if f.metadata["table"]]
    rows = [[_cell(row.get(f.name), f.metadata["fmt"]) for f in columns] for row in history]
    return format_text_table([f.metadata["table"] for f in columns], rows)


def _cell(value: Any, fmt: str) -> str:
    if value is None or value == "":  # a column an older checkpoint's history lacks
        return ""
    return str(int(value)) if fmt == "d" else f"{float(value):{fmt}}"


def format_text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with right-aligned columns (floats with 4 decimals)."""
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = [" | ".join(h.rjust(w) for h, w in zip(headers, widths)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


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
