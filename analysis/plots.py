"""PNG figures: spike statistics (``--stats``) and per-epoch training curves.

matplotlib is optional: every function returns None without it, and the caller prints
:data:`MATPLOTLIB_HINT`. Figures are drawn with matplotlib's object API (no pyplot), so no
global backend or figure state is touched.
"""
from __future__ import annotations

import csv
import math
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["MATPLOTLIB_HINT", "plot_spike_stats", "plot_training_curves", "spike_stats_figure",
           "training_curves_figure"]

MATPLOTLIB_HINT = "matplotlib is not installed, so no plots were drawn: `pip install matplotlib`"


def _figure_class():
    """matplotlib's ``Figure``, or None when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def _save(figure, path: str | Path) -> Path:
    """Write ``figure`` as the PNG ``path`` whole or not at all (a temporary file, renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.name)
    try:
        with os.fdopen(fd, "wb") as handle:
            figure.savefig(handle, dpi=120, format="png")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def plot_spike_stats(summary: dict[str, Any], path: str | Path) -> Path | None:
    """Draw :func:`spike_stats_figure` into the PNG ``path``; None when matplotlib is missing."""
    figure = spike_stats_figure(summary)
    return None if figure is None else _save(figure, path)


def spike_stats_figure(summary: dict[str, Any]):
    """Per-layer firing rate and SNN/ANN operation ratio bars, and the raster if recorded, of
    ``summary`` (:func:`analysis.report.summarize`); a matplotlib ``Figure``, or None when
    matplotlib is not installed."""
    Figure = _figure_class()
    if Figure is None:
        return None
    layers, raster = summary["layers"], summary["raster"]
    figure = Figure(figsize=(max(7.0, 0.6 * len(layers) + 2), 12 if raster else 7),
                    layout="constrained")
    axes = figure.subplots(3, 1, height_ratios=[1, 1, 1.5]) if raster else figure.subplots(2, 1)
    _layer_bars(axes[0], axes[1], summary)
    if raster:
        _raster(axes[2], raster)
    return figure


def _layer_bars(rates, ratios, summary: dict[str, Any]) -> None:
    """Firing rate per layer on the axis ``rates``, SNN/ANN operations on ``ratios``."""
    layers = summary["layers"]
    positions = range(len(layers))
    rates.bar(positions, [row["firing_rate"] for row in layers], color="tab:blue")
    rates.set_ylabel("spikes / neuron / step")
    rates.set_title(f"Firing rate per layer (T = {summary['time_steps']}, "
                    f"{summary['images']} images)")
    ratios.bar(positions, [row["op_ratio"] or 0.0 for row in layers], color="tab:orange")
    ratios.axhline(1.0, color="tab:red", linestyle=":", linewidth=1.5,
                   label="break-even: as many operations as the ANN")
    total_ratio = summary["totals"]["op_ratio"]
    if total_ratio is not None:
        ratios.axhline(total_ratio, color="black", linestyle="--",
                       label=f"network: {total_ratio:.3f}")
    ratios.set_ylim(0, 1.1 * max([1.0, total_ratio or 0.0,
                                  *(row["op_ratio"] or 0.0 for row in layers)]))
    ratios.legend()
    ratios.set_ylabel("SNN AC / ANN ops")
    ratios.set_title("Synaptic operations caused by each layer's spikes, SNN / equivalent ANN\n"
                     "(below the break-even line at 1: fewer than the ANN's)")
    for axis in (rates, ratios):
        axis.set_xticks(list(positions), [row["name"] for row in layers], rotation=45,
                        ha="right")


def _raster(plot, raster: dict[str, Any]) -> None:
    from matplotlib.ticker import MaxNLocator

    neurons = raster["neurons"]
    # one row per neuron, ticks 0.7 rows tall so that neighbouring rows never merge
    plot.eventplot(raster["spike_times"], lineoffsets=range(len(neurons)), linelengths=0.7,
                   linewidths=1.5, colors="black")
    plot.set_yticks(range(len(neurons)), [str(n) for n in neurons], fontsize=9)
    plot.xaxis.set_major_locator(MaxNLocator(integer=True))  # time steps are whole
    plot.set_xlim(-0.5, raster["time_steps"] - 0.5)
    plot.set_ylim(-0.5, len(neurons) - 0.5)
    plot.grid(axis="y", color="0.9")
    plot.set_axisbelow(True)
    plot.set_xlabel("time step")
    plot.set_ylabel("neuron (flat index)")
    plot.set_title(f"Spike raster of {raster['layer']}, image {raster['image']}: "
                   f"{sum(map(len, raster['spike_times']))} spikes of the "
                   f"{len(neurons)} neurons shown")


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
# Beyond this many epochs the curves are drawn without markers (they would merge into a band).
_MARKED_EPOCHS = 40


def _curve_style(name: str, marked: bool) -> dict[str, Any]:
    """Line style of CSV column ``name``: train blue, test orange; top-5 dotted; train hollow
    circles around test's small filled squares, so equal values still show both points."""
    lower = name.lower()
    style: dict[str, Any] = {"color": "tab:orange" if lower.startswith("test") else "tab:blue",
                             "linestyle": ":" if "top5" in lower else "-", "linewidth": 1.5}
    if marked:
        if lower.startswith("test"):
            style.update(marker="s", markersize=4)
        else:
            style.update(marker="o", markersize=8, markerfacecolor="none", markeredgewidth=1.5)
    return style


def _curve_label(name: str, values: list[float], epochs: list[float]) -> str:
    """``test_top1`` -> ``test top-1 (best 62.50 % at epoch 2)``; others readable as they are."""
    label = name.replace("_top1", " top-1").replace("_top5", " top-5").replace("_ce", " CE")
    label = label.replace("_", " ")
    finite = [(value, epoch) for value, epoch in zip(values, epochs) if value == value]
    if name == "test_top1" and finite:
        best, epoch = max(finite, key=lambda pair: pair[0])
        label += f" (best {best:.2f} % at epoch {epoch:g})"
    return label


def training_curves_figure(csv_path: str | Path, epoch_column: str = "epoch",
                           title: str | None = None, classes: int = 10):
    """Loss, cross-entropy and accuracy against epoch from a per-epoch CSV, read by header name.

    A column goes to the loss panel if its name contains ``loss``, to the cross-entropy panel if
    it contains ``_ce``, to the accuracy panel if it contains ``top1``, ``top5``, ``acc`` or
    ``prec``; other columns (``lr``, timings) are not drawn, nor are panels left empty. The
    axes read at a glance after one epoch as after hundreds: whole-number epochs, losses from
    0, accuracy from 0 to 100 % (from just below the lowest value once the run settles above
    50 %, with a triangle on the lower edge for each point below it and the lowest value
    written), tick labels without an offset. Dashed vertical lines mark the epochs where ``lr``
    changes. The cross-entropy panel shows, for ``classes`` classes, the cross-entropy of an
    output exactly equal to its one-hot target and of a silent one, and the caption says why
    the curve stays near the first. Returns a matplotlib ``Figure``, or None when matplotlib is
    not installed; raises ValueError if the CSV has no ``epoch_column`` column.
    """
    columns = _read_columns(csv_path)
    if epoch_column not in columns:
        raise ValueError(f"{csv_path} has no {epoch_column!r} column")
    Figure = _figure_class()
    if Figure is None:
        return None
    epochs = columns[epoch_column]
    rates = columns.get("lr", [])
    lr_changes = [epoch for epoch, rate, previous in zip(epochs[1:], rates[1:], rates)
                  if rate != previous]
    panels = [(label, [name for name in columns if any(key in name.lower() for key in keys)])
              for label, keys in _CURVE_PANELS]
    panels = [(label, names) for label, names in panels if names]  # no empty panel
    figure = Figure(figsize=(4.5 * max(1, len(panels)), 4.8), layout="constrained")
    if title:
        figure.suptitle(title)
    for axis, (label, names) in zip(figure.subplots(1, max(1, len(panels)), squeeze=False)[0],
                                    panels):
        for epoch in lr_changes:
            axis.axvline(epoch - 0.5, color="0.6", linestyle="--", linewidth=1)
        _draw_panel(axis, label, {name: columns[name] for name in names}, epochs, classes)
        axis.set_xlabel(epoch_column)
    if any(label == "cross-entropy" for label, _ in panels):
        figure.supxlabel(_cross_entropy_caption(classes), fontsize=8, wrap=True)
    return figure


def _cross_entropy_references(classes: int) -> dict[str, float]:
    """Softmax cross-entropy of an output equal to its one-hot target (1 for the true class, 0
    for the others: ln(K - 1 + e) - 1), and of a silent, all-zero output (ln K)."""
    return {"output = one-hot target": math.log(classes - 1 + math.e) - 1,
            "silent output (all 0)": math.log(classes)}


def _cross_entropy_caption(classes: int) -> str:
    one_hot, silent = _cross_entropy_references(classes).values()
    return (f"Cross-entropy is logged, not trained: the summed-MSE loss pulls the output "
            rf"$M_T / (\theta T)$ toward the one-hot target, and softmax of even an exactly "
            f"one-hot output gives cross-entropy ln({classes - 1} + e) - 1 = {one_hot:.2f}, not 0; a "
            f"silent output gives ln {classes} = {silent:.2f} (dotted lines).")


def _draw_panel(axis, label: str, curves: dict[str, list[float]], epochs: list[float],
                classes: int) -> None:
    """One panel of :func:`training_curves_figure`: its curves (by CSV column name), reference
    lines, axes and legend."""
    marked = len(epochs) <= _MARKED_EPOCHS
    for name, values in curves.items():
        axis.plot(epochs, values, label=_curve_label(name, values, epochs),
                  **_curve_style(name, marked))
    references = _cross_entropy_references(classes) if label == "cross-entropy" else {}
    for (what, value), color in zip(references.items(), ("tab:green", "0.4")):
        axis.axhline(value, color=color, linestyle=":", linewidth=1.2,
                     label=f"{what}: {value:.2f}")
    axis.set_ylabel(label)
    _curve_axes(axis, epochs, [*curves.values(), list(references.values())], label)
    if label.startswith("accuracy"):
        _mark_clipped(axis, curves, epochs, marked)


def _mark_clipped(axis, curves: dict[str, list[float]], epochs: list[float],
                  marked: bool) -> None:
    """Points below an accuracy panel's lower limit: a triangle on the lower edge at each
    epoch, and the lowest value of each curve written beside its triangle."""
    low = axis.get_ylim()[0]
    for row, (name, values) in enumerate(curves.items()):
        below = [(value, epoch) for value, epoch in zip(values, epochs) if value < low]
        if not below:
            continue
        color = _curve_style(name, marked)["color"]
        axis.plot([epoch for _, epoch in below], [low] * len(below), linestyle="none",
                  marker="v", markersize=7, color=color, clip_on=False)
        value, epoch = min(below)
        axis.annotate(f"{_curve_label(name, [], [])} {value:.2f} % at epoch {epoch:g} (below)",
                      xy=(epoch, low),
                      xytext=(6, 4 + 11 * row), textcoords="offset points", fontsize=8,
                      color=color)


def _curve_axes(axis, epochs: list[float], curves: list[list[float]], label: str) -> None:
    """Ticks, limits, legend and grid of one panel of :func:`training_curves_figure`."""
    from matplotlib.ticker import MaxNLocator

    if len(epochs) <= _MARKED_EPOCHS // 2:
        axis.set_xticks(epochs)
    else:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    axis.ticklabel_format(axis="y", useOffset=False)
    if epochs:
        axis.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    if label.startswith("accuracy"):
        # 0-100 %, unless the run settles above 50 %: then the last percents must show,
        # and the first tenth of a long run may leave the panel at the bottom
        settled = [v for curve in curves for v in curve[len(epochs) // 10:] if v == v]
        lowest = min(settled, default=0.0)
        axis.set_ylim(0 if lowest < 50 else math.floor(lowest) - 1, 100.5)
    else:
        highest = max((v for curve in curves for v in curve if v == v), default=1.0)
        axis.set_ylim(0, 1.1 * highest if highest > 0 else 1.0)
    # below the panel: inside, it would hide points wherever they happen to lie
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2,
                frameon=False)
    axis.grid(color="0.9")
    axis.set_axisbelow(True)


def plot_training_curves(csv_path: str | Path, png_path: str | Path,
                         epoch_column: str = "epoch", title: str | None = None,
                         classes: int = 10) -> Path | None:
    """Draw :func:`training_curves_figure` of ``csv_path`` into the PNG ``png_path``; returns
    ``png_path``, or None when matplotlib is not installed."""
    figure = training_curves_figure(csv_path, epoch_column, title, classes)
    return None if figure is None else _save(figure, png_path)
