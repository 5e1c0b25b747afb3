"""Turn :class:`~analysis.monitor.SpikeMonitor` counts into a per-image summary, table and JSON.

The summary is a plain dict (the JSON written by :func:`write_json`) with the fields named
below (``SUMMARY_FIELDS`` ...) and explained in docs/analysis.md; every
operation and energy figure in it is per image, averaged over the images seen.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import plots
from .monitor import LayerCounts, SpikeMonitor

__all__ = ["ENERGY_SOURCE", "LAYER_FIELDS", "OUTPUT_FIELDS", "SUMMARY_FIELDS", "TOTAL_FIELDS",
           "format_table", "raster_sample", "summarize", "write_json", "write_report"]

ENERGY_SOURCE = ("M. Horowitz, 'Computing's energy problem (and what we can do about it)', "
                 "ISSCC 2014: 45 nm CMOS, 32-bit float, "
                 "MAC = mult 3.7 pJ + add 0.9 pJ, AC = add 0.9 pJ")

SUMMARY_FIELDS = ("time_steps", "images", "energy_per_op_pj", "layers", "totals", "output",
                  "raster", "meta")
OUTPUT_FIELDS = ("images", "silent", "silent_fraction", "top1")
LAYER_FIELDS = ("index", "name", "kind", "neurons", "spikes_per_image", "spikes_per_neuron",
                "firing_rate", "targets", "snn_ac", "ann_mac", "ann_ac", "op_ratio",
                "snn_energy_uj", "ann_energy_uj")
TOTAL_FIELDS = ("neurons", "spikes_per_image", "spikes_per_neuron", "firing_rate", "snn_ac",
                "ann_mac", "ann_ac", "op_ratio", "snn_energy_uj", "ann_energy_uj", "energy_ratio")

_PJ_TO_UJ = 1e-6


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def raster_sample(raster: Tensor, count: int) -> list[int]:
    """Pick ``count`` neurons of a ``[T, N]`` raster to show: evenly spaced among those that
    spiked, topped up with evenly spaced silent ones when fewer fired. Sorted flat indices."""
    fired = raster.any(dim=0)
    active, silent = fired.nonzero().flatten(), (~fired).nonzero().flatten()

    def spread(indices: Tensor, k: int) -> list[int]:
        if k >= len(indices):
            return indices.tolist()
        return indices[torch.linspace(0, len(indices) - 1, k).round().long()].tolist()

    chosen = spread(active, count)
    return sorted(chosen + spread(silent, count - len(chosen)))


def summarize(monitor: SpikeMonitor, mac_energy_pj: float = 4.6, ac_energy_pj: float = 0.9,
              raster_neurons: int = 20, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-image summary of a monitor's counts (fields in the module docstring).

    Args:
        monitor: a :class:`SpikeMonitor` after at least one forward pass.
        mac_energy_pj: energy of one multiply-accumulate (default: 45 nm, 32-bit float).
        ac_energy_pj: energy of one accumulate (addition).
        raster_neurons: how many neurons of the monitor's raster to keep.
        meta: free-form facts to store with the numbers.
    """
    if not monitor.layers:
        raise ValueError("the monitor has seen no forward pass")
    layers = [_layer_row(index, layer, monitor, mac_energy_pj, ac_energy_pj)
              for index, layer in enumerate(monitor.layers.values())]
    raster = None
    if monitor.raster is not None:
        neurons = raster_sample(monitor.raster, raster_neurons)
        raster = {"layer": monitor.raster_layer, "image": monitor.raster_image,
                  "time_steps": monitor.raster.shape[0], "neurons": neurons,
                  "spike_times": [monitor.raster[:, n].nonzero().flatten().tolist()
                                  for n in neurons]}
    seen = monitor.output
    output = None if seen.images == 0 else {
        "images": seen.images, "silent": seen.silent,
        "silent_fraction": seen.silent / seen.images, "top1": 100.0 * seen.correct / seen.images}
    first = next(iter(monitor.layers.values()))
    return {
        "time_steps": first.time_steps,
        "images": first.images,
        "energy_per_op_pj": {"mac": mac_energy_pj, "ac": ac_energy_pj, "source": ENERGY_SOURCE},
        "layers": layers,
        "totals": _totals(layers, monitor),
        "output": output,
        "raster": raster,
        "meta": dict(meta or {}),
    }


def _layer_row(index: int, layer: LayerCounts, monitor: SpikeMonitor, mac_energy_pj: float,
               ac_energy_pj: float) -> dict[str, Any]:
    """One entry of the summary's ``layers``: ``layer``'s spikes and the operations they cause."""
    targets = [s for s in monitor.synapses.values() if s.source == layer.name]
    snn_ac = sum(s.snn_ac / s.images for s in targets)
    ann_mac = sum(s.ann_ops_per_image for s in targets if s.weighted)
    ann_ac = sum(s.ann_ops_per_image for s in targets if not s.weighted)
    return {
        "index": index, "name": layer.name, "kind": layer.kind, "neurons": layer.neurons,
        "spikes_per_image": layer.spikes / layer.images,
        "spikes_per_neuron": layer.spikes / (layer.neurons * layer.images),
        "firing_rate": layer.spikes / layer.neuron_steps,
        "targets": [s.name for s in targets],
        "snn_ac": snn_ac, "ann_mac": ann_mac, "ann_ac": ann_ac,
        "op_ratio": _ratio(snn_ac, ann_mac + ann_ac),
        "snn_energy_uj": snn_ac * ac_energy_pj * _PJ_TO_UJ,
        "ann_energy_uj": (ann_mac * mac_energy_pj + ann_ac * ac_energy_pj) * _PJ_TO_UJ,
    }


def _totals(layers: list[dict[str, Any]], monitor: SpikeMonitor) -> dict[str, Any]:
    """The summary's ``totals``: the layers' sums, the input included."""
    totals = {field: sum(row[field] for row in layers) for field in
              ("neurons", "spikes_per_image", "snn_ac", "ann_mac", "ann_ac", "snn_energy_uj",
               "ann_energy_uj")}
    neuron_steps = sum(layer.neuron_steps / layer.images for layer in monitor.layers.values())
    totals["spikes_per_neuron"] = totals["spikes_per_image"] / totals["neurons"]
    totals["firing_rate"] = totals["spikes_per_image"] / neuron_steps
    totals["op_ratio"] = _ratio(totals["snn_ac"], totals["ann_mac"] + totals["ann_ac"])
    totals["energy_ratio"] = _ratio(totals["ann_energy_uj"], totals["snn_energy_uj"])
    return {field: totals[field] for field in TOTAL_FIELDS}


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def format_table(summary: dict[str, Any]) -> str:
    """A fixed-width text table of :func:`summarize`'s output, with totals and energy lines."""
    header = ("#", "layer", "kind", "neurons", "spikes/neuron", "rate/step", "SNN AC",
              "ANN MAC", "ANN add", "SNN/ANN ops", "-> targets")
    rows = [header]
    for row in summary["layers"] + [dict(summary["totals"], index="", name="total", kind="",
                                         targets=[])]:
        rows.append((str(row["index"]), row["name"], row["kind"], _number(row["neurons"]),
                     _number(row["spikes_per_neuron"], 3), _number(row["firing_rate"], 4),
                     _number(row["snn_ac"]), _number(row["ann_mac"]), _number(row["ann_ac"]),
                     _number(row["op_ratio"], 3), ", ".join(row["targets"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    left = {1, 2, len(header) - 1}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "-" * len(line(header))
    energy, totals, output = summary["energy_per_op_pj"], summary["totals"], summary["output"]
    silence = [] if output is None else [
        f"Output layer: {output['silent']} of {output['images']} images reached by no spike "
        f"(output exactly 0); top-1 {output['top1']:.2f} %"]
    return "\n".join([
        f"Spike activity and synaptic operations per image "
        f"(T = {summary['time_steps']}, {summary['images']} images)",
        line(header), rule, *map(line, rows[1:-1]), rule, line(rows[-1]),
        f"Energy per image (MAC {energy['mac']} pJ, AC {energy['ac']} pJ; Horowitz, ISSCC 2014, "
        f"45 nm, 32-bit float): SNN {_number(totals['snn_energy_uj'], 3)} uJ, "
        f"ANN {_number(totals['ann_energy_uj'], 3)} uJ, "
        f"ANN/SNN {_number(totals['energy_ratio'], 2)}x",
        *silence,
    ])


def write_json(summary: dict[str, Any], path: str | Path) -> Path:
    """Write ``summary`` as indented JSON to ``path`` (parent folders created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def write_report(monitor: SpikeMonitor, json_path: str, png_path: str, mac_energy_pj: float,
                 ac_energy_pj: float, meta: dict[str, Any]) -> dict[str, Any]:
    """Print the per-layer table, write the JSON and (with matplotlib) the PNG; return the
    summary. ``meta`` records what the numbers belong to (network, checkpoint, top-1, ...)."""
    summary = summarize(monitor, mac_energy_pj, ac_energy_pj, meta=meta)
    print(format_table(summary))
    print(f"spike statistics: {write_json(summary, json_path)}")
    drawn = plots.plot_spike_stats(summary, png_path)
    print(f"spike statistics plot: {drawn}" if drawn else plots.MATPLOTLIB_HINT, flush=True)
    return summary
