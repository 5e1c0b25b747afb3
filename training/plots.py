"""PNG figures: spike statistics (issue 5) and per-epoch training curves.

matplotlib is optional: every function returns None without it, and the caller prints
:data:`MATPLOTLIB_HINT`. Figures are drawn with matplotlib's object API (no pyplot), so no
global backend or figure state is touched.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

__all__ = ["MATPLOTLIB_HINT", "plot_spike_stats", "plot_training_curves"]

MATPLOTLIB_HINT = "matplotlib is not installed, so no plots were drawn: `pip install matplotlib`"


def _figure_class():
    """matplotlib's ``Figure``, or None when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def plot_spike_stats(summary: dict[str, Any], path: str | Path) -> Path | None:
    """Per-layer firing rate and SNN/ANN operation ratio bars, and the raster if recorded.

    Args:
        summary: the dict of :func:`spiking.report.summarize`.
        path: the PNG to write.

    Returns:
        ``path``, or None when matplotlib is not installed.
    """
    Figure = _figure_class()
    if Figure is None:
        return None
    layers, raster = summary["layers"], summary["raster"]
    names = [row["name"] for row in layers]
    positions = range(len(layers))
    figure = Figure(figsize=(max(7.0, 0.6 * len(layers) + 2), 10 if raster else 7),
                    layout="constrained")
    axes = figure.subplots(3 if raster else 2, 1)

    rates = axes[0]
    rates.bar(positions, [row["firing_rate"] for row in layers], color="tab:blue")
    rates.set_ylabel("spikes / neuron / step")
    rates.set_title(f"Firing rate per layer (T = {summary['time_steps']}, "
                    f"{summary['images']} images)")

    ratios = axes[1]
    ratios.bar(positions, [row["op_ratio"] or 0.0 for row in layers], color="tab:orange")
    total_ratio = summary["totals"]["op_ratio"]
    if total_ratio is not None:
        ratios.axhline(total_ratio, color="black", linestyle="--",
                       label=f"network: {total_ratio:.3f}")
        ratios.legend()
    ratios.set_ylabel("SNN AC / ANN ops")
    ratios.set_title("Synaptic operations caused by each layer's spikes, SNN / equivalent ANN")
    for axis in axes[:2]:
        axis.set_xticks(list(positions), names, rotation=45, ha="right")

    if raster:
        plot = axes[2]
        for row, times in enumerate(raster["spike_times"]):
            plot.scatter(times, [row] * len(times), marker="|", s=80, color="black")
        plot.set_yticks(range(len(raster["neurons"])), [str(n) for n in raster["neurons"]],
                        fontsize=6)
        plot.set_xlim(-0.5, raster["time_steps"] - 0.5)
        plot.set_ylim(-0.5, len(raster["neurons"]) - 0.5)
        plot.set_xlabel("time step")
        plot.set_ylabel("neuron (flat index)")
        plot.set_title(f"Spike raster of {raster['layer']}, image {raster['image']}")
    return _save(figure, path)


def _read_columns(csv_path: str | Path) -> dict[str, list[float]]:
    """Numeric columns of a CSV by header name (non-numeric or empty cells become NaN)."""
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns: dict[str, list[float]] = {}
    for name in rows[0] if rows else []:
        values = []
        for row in rows:
            try:
                values.append(float(row[name]))
            except (TypeError, ValueError):
                values.append(float("nan"))
        columns[name] = values
    return columns


# Panels of the training curves: (y label, substrings that put a CSV column on that panel).
_CURVE_PANELS = (("loss", ("loss",)), ("cross-entropy", ("_ce",)),
                 ("accuracy (%)", ("top1", "top5", "acc", "prec")))


def plot_training_curves(csv_path: str | Path, png_path: str | Path,
                         epoch_column: str = "epoch") -> Path | None:
    """Loss, cross-entropy and accuracy against epoch from a per-epoch CSV, read by header name.

    A column goes to the loss panel if its name contains ``loss``, to the cross-entropy panel if
    it contains ``_ce``, to the accuracy panel if it contains ``top1``, ``top5``, ``acc`` or
    ``prec``; other columns (``lr``, timings) are not drawn, nor are panels left empty.

    Args:
        csv_path: the per-epoch CSV with a header row (e.g. ``training.metrics.CSV_FIELDS``).
        png_path: the PNG to write.
        epoch_column: the x-axis column.

    Returns:
        ``png_path``, or None when matplotlib is not installed.

    Raises:
        ValueError: if the CSV has no ``epoch_column`` column.
    """
    columns = _read_columns(csv_path)
    if epoch_column not in columns:
        raise ValueError(f"{csv_path} has no {epoch_column!r} column")
    Figure = _figure_class()
    if Figure is None:
        return None
    epochs = columns[epoch_column]
    panels = [(label, [name for name in columns if any(key in name.lower() for key in keys)])
              for label, keys in _CURVE_PANELS]
    panels = [(label, names) for label, names in panels if names]
    figure = Figure(figsize=(4.5 * max(1, len(panels)), 4), layout="constrained")
    for axis, (label, names) in zip(figure.subplots(1, max(1, len(panels)), squeeze=False)[0],
                                    panels):
        for name in names:
            axis.plot(epochs, columns[name], marker="o", label=name)
        axis.set_xlabel(epoch_column)
        axis.set_ylabel(label)
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.legend()
    return _save(figure, png_path)
