"""What a run writes besides checkpoints and the CSV: the spike statistics of ``--stats``
and the figure of the per-epoch curves.

The counting lives in :mod:`spiking.monitor`, the numbers in :mod:`spiking.report` and the
figures in :mod:`training.plots`; this module connects them to the engine's settings and output
folder.
"""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from . import plots
from spiking.monitor import SpikeMonitor, spiking_layer_names
from spiking.report import format_table, summarize, write_json

from .checkpoint import run_tag
from .experiment import Experiment, UsageError

__all__ = ["curves_path", "make_spike_monitor", "report_spike_stats", "spike_stats_paths",
           "write_training_curves"]


def spike_stats_paths(settings: Experiment) -> tuple[str, str]:
    """``(<out_dir>/spike_stats_<tag>.json, <out_dir>/spike_stats_<tag>.png)``."""
    stem = os.path.join(settings.out_dir, f"spike_stats_{run_tag(settings)}")
    return f"{stem}.json", f"{stem}.png"


def curves_path(settings: Experiment) -> str:
    """``<out_dir>/curves_<tag>.png``, the figure of ``metrics_<tag>.csv``."""
    return os.path.join(settings.out_dir, f"curves_{run_tag(settings)}.png")


def make_spike_monitor(model: nn.Module, settings: Experiment) -> SpikeMonitor:
    """A detached :class:`SpikeMonitor` for ``model``, keeping the raster of
    ``settings.raster_layer`` (empty: the first hidden layer) for the first test image.

    Raises:
        UsageError: if ``settings.raster_layer`` is not a spiking layer of ``model``.
    """
    names = spiking_layer_names(model)
    layer = settings.raster_layer or names[1]
    if layer not in names:
        raise UsageError(f"--raster-layer {layer!r} is not a spiking layer of {settings.arch}; "
                         f"choose from {', '.join(names)}")
    return SpikeMonitor(raster_layer=layer)


def report_spike_stats(monitor: SpikeMonitor, settings: Experiment, checkpoint: str,
                       test_top1: float) -> dict[str, Any]:
    """Print the per-layer table, write the JSON and (with matplotlib) the PNG; return the
    summary (see :mod:`spiking.report` for its fields).

    Args:
        monitor: the monitor after the test pass.
        settings: the run's settings (energies, output folder, tag).
        checkpoint: the weights the statistics belong to, recorded in ``meta``.
        test_top1: the test pass's top-1 accuracy (percent), recorded in ``meta``.
    """
    meta = {"arch": settings.arch, "dataset": settings.dataset, "synthetic": settings.synthetic,
            "width": settings.width, "checkpoint": checkpoint, "test_top1": test_top1,
            "seed": settings.seed}
    summary = summarize(monitor, settings.mac_energy, settings.ac_energy, meta=meta)
    json_path, png_path = spike_stats_paths(settings)
    print(format_table(summary))
    print(f"spike statistics: {write_json(summary, json_path)}")
    drawn = plots.plot_spike_stats(summary, png_path)
    print(f"spike statistics plot: {drawn}" if drawn else plots.MATPLOTLIB_HINT, flush=True)
    return summary


def write_training_curves(csv_path: str, settings: Experiment) -> None:
    """Draw ``csv_path``'s per-epoch curves into :func:`curves_path`, or say how to get them."""
    data = f"synthetic {settings.dataset}" if settings.synthetic else settings.dataset
    width = "" if settings.width == 1 else f", width {settings.width:g}"
    title = f"{run_tag(settings)}: {settings.arch} on {data}, T = {settings.time_steps}{width}"
    drawn = plots.plot_training_curves(csv_path, curves_path(settings), title=title)
    print(f"training curves: {drawn}" if drawn else plots.MATPLOTLIB_HINT, flush=True)
