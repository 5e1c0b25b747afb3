"""What a run measures and shows: top-k accuracy, the sums over one pass, the progress display,
and the per-epoch record that feeds the CSV, the epoch summary line and the final table (a new
metric is one field of :class:`EpochRecord` and the line in the engine that computes it)."""
from __future__ import annotations

import csv
import io
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from .distributed import all_reduce, is_main_process
from .files import atomic_save


@torch.no_grad()
def accuracy(output: Tensor, target: Tensor, topk: Sequence[int] = (1,)) -> list[float]:
    """Percentage of ``target`` labels ``[B]`` among the top-k entries of ``output`` ``[B, K]``
    for each k (k above K counts as K)."""
    maxk = min(max(topk), output.shape[1])
    hits = output.topk(maxk, dim=1).indices.eq(target[:, None])
    return [hits[:, :min(k, maxk)].any(dim=1).float().mean().item() * 100.0 for k in topk]


class AverageMeter:
    """Current value and running, sample-weighted average of one quantity."""

    def __init__(self, name: str, fmt: str = ":f") -> None:
        self.name, self.fmt = name, fmt
        self.reset()

    def reset(self) -> None:
        self.val = self.avg = self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1) -> None:
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count

    def __str__(self) -> str:
        return ("{name} {val" + self.fmt + "} ({avg" + self.fmt + "})").format(**self.__dict__)


@dataclass(frozen=True)
class EpochStats:
    """Averages over one pass: ``loss`` is the summed-MSE loss per image, ``cross_entropy`` that
    of the output (logged only), ``top1``/``top5`` in percent."""

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
    """This process's sample-weighted sums over a pass (loss, CE, top-1, top-5), image count and
    seconds; ``state`` (from :meth:`state`) continues a pass a mid-epoch checkpoint interrupted."""

    def __init__(self, state: Sequence[float] | None = None) -> None:
        *self.sums, self.count, seconds = state or (0.0,) * 6
        self.start = time.perf_counter() - seconds

    def state(self) -> list[float]:
        return [*self.sums, self.count, time.perf_counter() - self.start]

    def update(self, output: Tensor, target: Tensor, loss: Tensor) -> tuple[float, float]:
        """Add one batch; returns its loss per image and top-1."""
        n = target.shape[0]
        top1, top5 = accuracy(output, target, (1, 5))
        values = [loss.item() / n, F.cross_entropy(output.detach().float(), target).item(),
                  top1, top5]
        self.sums = [total + value * n for total, value in zip(self.sums, values)]
        self.count += n
        return values[0], top1

    def stats(self, device: torch.device) -> EpochStats:
        """Sample-weighted averages over all ranks (this process's alone when not distributed)."""
        *sums, count = all_reduce([*self.sums, self.count], device, "sum")
        averages = [total / count if count else 0.0 for total in sums]
        return EpochStats(*averages, int(count), time.perf_counter() - self.start)


class EpochProgress:
    """Loss, top-1 and throughput while one pass runs, shown by rank 0 only: a tqdm bar when
    stderr is a terminal, else (a log file) a plain line on stdout every ``print_freq`` batches
    and after the last. A resumed epoch passes the ``done`` batches and the ``meters`` of the
    interrupted pass, so that its averages and throughput count the whole epoch."""

    def __init__(self, total: int, description: str, print_freq: int = 10, done: int = 0,
                 meters: EpochMeters | None = None) -> None:
        self.total, self.description, self.print_freq, self.batches = (total, description,
                                                                       print_freq, done)
        self.loss, self.top1 = AverageMeter("Loss", ":.4f"), AverageMeter("Prec@1", ":6.2f")
        self.start, self.shown = time.perf_counter(), is_main_process()
        if meters is not None and meters.count:
            for meter, total_value in ((self.loss, meters.sums[0]), (self.top1, meters.sums[2])):
                meter.sum, meter.count = total_value, meters.count
                meter.avg = total_value / meters.count
            self.start = meters.start
        self.bar = (tqdm(total=total, initial=done, desc=description, unit="batch",
                         dynamic_ncols=True, leave=False)
                    if self.shown and sys.stderr.isatty() else None)

    def update(self, batch_size: int, loss: float, top1: float) -> None:
        """One finished batch: its ``loss`` per image and ``top1`` in percent."""
        self.loss.update(loss, batch_size)
        self.top1.update(top1, batch_size)
        self.batches += 1
        rate = self.loss.count / max(time.perf_counter() - self.start, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix({"loss": f"{self.loss.avg:.4f}", "top1": f"{self.top1.avg:.2f}",
                                  "samples/s": f"{rate:.1f}"}, refresh=False)
            self.bar.update(1)
        elif self.shown and (self.batches % self.print_freq == 0 or self.batches == self.total):
            print(f"{self.description} [{self.batches:{len(str(self.total))}d}/{self.total}]  "
                  f"{self.loss}  {self.top1}  {rate:.1f} samples/s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> EpochProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _metric(summary: str, fmt: str = ".4f", table: str = "") -> Any:
    """A field of :class:`EpochRecord`: its part of the summary line (``{}`` takes the value in
    ``fmt``; empty: not shown) and its column header in the final table (empty: not shown)."""
    return field(metadata=dict(summary=summary, fmt=fmt, table=table))


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's metrics (``epoch`` from 1, losses per image, accuracies in percent): a CSV
    row, the summary line and a row of the final table."""

    epoch: int = _metric("Epoch {}/{epochs}", "d", "epoch")
    lr: float = _metric("| lr {}", ".3g", "lr")
    train_loss: float = _metric("| train loss {}", table="train loss")
    train_ce: float = _metric("CE {}")
    train_top1: float = _metric("top-1 {}%", ".2f", "train top-1")
    train_top5: float = _metric("", ".2f")
    test_loss: float = _metric("| test loss {}", table="test loss")
    test_ce: float = _metric("CE {}")
    test_top1: float = _metric("top-1 {}%", ".2f", "test top-1")
    test_top5: float = _metric("top-5 {}%", ".2f", "test top-5")
    train_samples_per_s: float = _metric("| {} samples/s", ".1f")
    epoch_seconds: float = _metric("| {} s", ".1f", "seconds")

    def row(self) -> dict[str, Any]:
        """The CSV row (and checkpoint history entry): floats to 6 significant digits, so the
        file shows 10.0 rather than 10.000000029802322."""
        return {k: float(f"{v:.6g}") if isinstance(v, float) else v
                for k, v in asdict(self).items()}

    def summary(self, epochs: int, best: float) -> str:
        """``Epoch 3/10 | lr 0.0085 | train loss ... | test loss ... | ... | best 98.10%``."""
        parts = []
        for f in fields(self):
            if f.metadata["summary"]:
                value = format(getattr(self, f.name), f.metadata["fmt"])
                parts.append(f.metadata["summary"].format(value, epochs=epochs))
        return " ".join([*parts, f"| best {best:.2f}%"])


CSV_FIELDS = tuple(f.name for f in fields(EpochRecord))


def format_epoch_table(history: Sequence[Mapping[str, Any]]) -> str:
    """The end-of-run table of ``history`` (CSV rows, e.g. a checkpoint's), right-aligned in the
    columns that :class:`EpochRecord` marks for it; a column an older checkpoint's history lacks
    stays empty."""
    def cell(value: Any, fmt: str) -> str:
        if value in (None, ""):
            return ""
        return format(int(value) if fmt == "d" else float(value), fmt)

    columns = [f for f in fields(EpochRecord) if f.metadata["table"]]
    headers = [f.metadata["table"] for f in columns]
    rows = [[cell(row.get(f.name), f.metadata["fmt"]) for f in columns] for row in history]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join(("-+-" if i == 1 else " | ").join(c.rjust(w) for c, w in zip(line, widths))
                     for i, line in enumerate(lines))


def write_metrics(path: str, history: Sequence[Mapping[str, Any]]) -> None:
    """``history`` (every epoch's row, a resumed checkpoint's included) as the CSV ``path``,
    columns ``CSV_FIELDS``, replaced whole, so that it never holds half a row and always
    matches the checkpoint written with it."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_save(text.getvalue().encode(), path)
