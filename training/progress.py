"""Per-epoch progress: a tqdm bar on a terminal, plain ``[batch/total]`` lines otherwise."""
from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from tqdm import tqdm

from .metrics import AverageMeter, ProgressMeter

__all__ = ["EpochProgress", "format_table"]


class EpochProgress:
    """Shows loss, top-1 and throughput while one pass over a loader runs.

    On a terminal (``bar_stream`` is a TTY) it draws a tqdm bar on ``bar_stream``; otherwise, as
    in a log file or under a batch scheduler, it writes a plain line to ``line_stream`` every
    ``print_freq`` batches and after the last one, so logs carry no carriage-return clutter.
    """

    def __init__(self, total: int, description: str, print_freq: int = 10,
                 bar_stream: TextIO | None = None, line_stream: TextIO | None = None) -> None:
        self.bar_stream = bar_stream or sys.stderr
        self.line_stream = line_stream or sys.stdout
        self.total = total
        self.print_freq = print_freq
        self.loss = AverageMeter("Loss", ":.4f")
        self.top1 = AverageMeter("Prec@1", ":6.2f")
        self.meter = ProgressMeter(total, [self.loss, self.top1], prefix=f"{description} ")
        self.samples = 0
        self.batches = 0
        self.start = time.perf_counter()
        self.bar = (tqdm(total=total, desc=description, unit="batch", file=self.bar_stream,
                         dynamic_ncols=True, leave=False)
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


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with right-aligned columns (floats with 4 significant decimals)."""
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = [" | ".join(h.rjust(w) for h, w in zip(headers, widths)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
