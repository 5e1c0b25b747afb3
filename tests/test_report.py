"""Summary fields, table, JSON (and docs/analysis.md's list of its fields), the optional plots of
the spike statistics; training curves."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from analysis import SpikeMonitor, plots
from analysis.report import (LAYER_FIELDS, OUTPUT_FIELDS, SUMMARY_FIELDS, TOTAL_FIELDS,
                             format_table, raster_sample, summarize, write_json)
from models import get_model
from spiking import PoissonEncoder


@pytest.fixture(scope="module")
def summary() -> dict:
    torch.manual_seed(0)
    model = get_model("lenet", width=0.2).eval()
    spikes = PoissonEncoder(6, 0.5)(torch.rand(3, 1, 28, 28))
    with torch.no_grad(), SpikeMonitor(model, raster_layer="lif1") as monitor:
        model(spikes)
    return summarize(monitor, raster_neurons=8, meta={"arch": "lenet"})


def test_json_has_the_documented_fields(summary, tmp_path):
    loaded = json.loads(write_json(summary, tmp_path / "sub" / "stats.json").read_text())
    assert tuple(loaded) == SUMMARY_FIELDS
    assert [tuple(row) for row in loaded["layers"]] == [LAYER_FIELDS] * 6
    assert tuple(loaded["totals"]) == TOTAL_FIELDS
    assert set(loaded["raster"]) == {"layer", "image", "time_steps", "neurons", "spike_times"}
    assert set(loaded["energy_per_op_pj"]) == {"mac", "ac", "source"}
    assert "Horowitz" in loaded["energy_per_op_pj"]["source"]
    assert loaded["meta"] == {"arch": "lenet"}
    assert loaded["output"] is None  # observe was never called
    assert [row["name"] for row in loaded["layers"]] == [
        "input", "lif1", "pool1", "lif2", "pool2", "lif_fc0"]


def test_table_lists_every_layer_and_the_totals(summary):
    table = format_table(summary)
    for name in ("input", "lif1", "pool1", "lif2", "pool2", "lif_fc0", "total", "cnn1"):
        assert name in table
    assert "T = 6, 3 images" in table
    assert "ANN/SNN" in table and "4.6 pJ" in table


def test_observed_outputs_are_summarised_and_tabled():
    torch.manual_seed(0)
    model = get_model("lenet", width=0.2).eval()
    with torch.no_grad(), SpikeMonitor(model) as monitor:
        output = model(PoissonEncoder(2, 0.5)(torch.rand(4, 1, 28, 28)))  # 2 steps: silent
        monitor.observe(output, torch.tensor([0, 1, 2, 3]))
    summary = summarize(monitor)
    assert tuple(summary["output"]) == OUTPUT_FIELDS
    assert summary["output"] == {"images": 4, "silent": 4, "silent_fraction": 1.0, "top1": 25.0}
    assert format_table(summary).splitlines()[-1] == (
        "Output layer: 4 of 4 images reached by no spike (output exactly 0); top-1 25.00 %")


def test_raster_sample_prefers_active_neurons():
    raster = torch.zeros(4, 10, dtype=torch.bool)
    raster[1, [2, 5, 7]] = True
    assert raster_sample(raster, 2) == [2, 7]
    assert raster_sample(raster, 5) == [0, 2, 5, 7, 9]
    assert raster_sample(raster, 20) == list(range(10))


def test_spike_stats_png(summary, tmp_path):
    pytest.importorskip("matplotlib")
    path = plots.plot_spike_stats(summary, tmp_path / "stats.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["stats.png"]  # no temporary file left
    ratios = plots.spike_stats_figure(summary).axes[1]
    [break_even] = [line for line in ratios.get_lines() if line.get_label().startswith("break")]
    assert list(break_even.get_ydata()) == [1, 1] and ratios.get_ylim()[1] > 1


def _write_curves(path):
    path.write_text("epoch,lr,train_loss,train_ce,test_loss,test_ce,test_top1,test_top5\n"
                    "1,0.01,2.0,1.2,1.9,1.1,45.0,90.0\n2,0.01,1.5,0.9,1.4,0.8,62.5,95.0\n")
    return path


def test_training_curves_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = plots.plot_training_curves(_write_curves(tmp_path / "log.csv"), tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="'step'"):
        plots.plot_training_curves(tmp_path / "log.csv", tmp_path / "d.png", epoch_column="step")


def _tick_labels(axis, which: str) -> list[str]:
    getattr(axis, f"get_{which}ticklabels")()  # labels are formatted at draw time
    return [label.get_text() for label in getattr(axis, f"get_{which}ticklabels")()]


def test_training_curves_read_at_a_glance_after_one_epoch(tmp_path):
    pytest.importorskip("matplotlib")
    # one epoch of a silent network: equal losses to the 8th digit used to give an offset label
    csv = tmp_path / "one.csv"
    csv.write_text("epoch,lr,train_loss,train_ce,train_top1,test_loss,test_ce,test_top1\n"
                   "1,0.01,1.0,2.3025853633880615,10.0,1.0,2.3025853538513186,10.0\n")
    figure = plots.training_curves_figure(csv, title="mnist_lenet: lenet on mnist, T = 4")
    figure.canvas.draw()
    assert figure.get_suptitle() == "mnist_lenet: lenet on mnist, T = 4"
    loss, cross_entropy, accuracy = figure.axes
    for axis in figure.axes:
        assert axis.yaxis.get_major_formatter().get_offset() == ""
        assert [tick for tick in axis.get_xticks() if axis.get_xlim()[0] <= tick
                <= axis.get_xlim()[1]] == [1]  # whole epochs only
    assert loss.get_ylim()[0] == 0 and cross_entropy.get_ylim()[0] == 0
    assert accuracy.get_ylim() == (0, 100.5)
    # why the cross-entropy stays high: its values for a one-hot and for a silent output
    references = {line.get_label(): line.get_ydata()[0] for line in cross_entropy.get_lines()
                  if line.get_linestyle() == ":"}
    assert references == {"output = one-hot target: 1.46": pytest.approx(1.4612, abs=1e-4),
                          "silent output (all 0): 2.30": pytest.approx(2.3026, abs=1e-4)}
    assert cross_entropy.get_ylim()[1] > 2.3026
    assert "ln(9 + e) - 1 = 1.46" in figure.get_supxlabel()
    # train and test points that coincide are both visible: different marker shapes and sizes
    train, test = (line for line in loss.get_lines() if line.get_label() in ("train loss",
                                                                              "test loss"))
    assert train.get_marker() != test.get_marker()
    assert train.get_markersize() > test.get_markersize() and train.get_markerfacecolor() == "none"
    assert plots.plot_training_curves(csv, tmp_path / "one.png").read_bytes()[:4] == b"\x89PNG"


def test_training_curves_of_a_long_run_zoom_on_the_settled_accuracy(tmp_path):
    pytest.importorskip("matplotlib")
    rows = ["epoch,lr,train_loss,test_top1"]
    rows += [f"{e},{0.01 if e <= 75 else 0.002},{1 / e},{min(99.5, 60 + e)}" for e in range(1, 126)]
    (tmp_path / "long.csv").write_text("\n".join(rows) + "\n")
    figure = plots.training_curves_figure(tmp_path / "long.csv")
    figure.canvas.draw()
    loss, accuracy = figure.axes
    assert accuracy.get_ylim()[0] == 72  # the first tenth (61-72 %) may leave the panel
    assert all(float(tick).is_integer() for tick in loss.get_xticks())
    assert [line.get_marker() for line in loss.get_lines() if line.get_label() == "train loss"] \
        == ["None"]  # 125 epochs: lines without markers
    [test_top1] = [line.get_label() for line in accuracy.get_lines()
                   if line.get_label().startswith("test top-1")]
    assert test_top1 == "test top-1 (best 99.50 % at epoch 40)"
    lr_change = [line.get_xdata()[0] for line in loss.get_lines() if line.get_linestyle() == "--"]
    assert lr_change == [75.5]
    # the points below the panel: a triangle on its lower edge each, the lowest one written
    [below] = [line for line in accuracy.get_lines() if line.get_marker() == "v"]
    assert list(below.get_xdata()) == list(range(1, 12)) and set(below.get_ydata()) == {72}
    assert [text.get_text() for text in accuracy.texts] == [
        "test top-1 61.00 % at epoch 1 (below)"]


def test_raster_has_whole_time_steps_and_readable_neuron_labels(summary):
    pytest.importorskip("matplotlib")
    figure = plots.spike_stats_figure(summary)
    figure.canvas.draw()
    raster = figure.axes[2]
    visible = [tick for tick in raster.get_xticks()
               if raster.get_xlim()[0] <= tick <= raster.get_xlim()[1]]
    assert visible and all(float(tick).is_integer() for tick in visible)
    assert min(label.get_fontsize() for label in raster.get_yticklabels()) >= 9
    assert _tick_labels(raster, "y") == [str(n) for n in summary["raster"]["neurons"]]


def test_without_matplotlib_nothing_is_drawn(summary, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert plots.plot_spike_stats(summary, tmp_path / "stats.png") is None
    assert plots.plot_training_curves(_write_curves(tmp_path / "log.csv"), tmp_path / "c.png") is None
    assert not list(tmp_path.glob("*.png"))
    assert "pip install matplotlib" in plots.MATPLOTLIB_HINT


def test_docs_document_every_json_field():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "analysis.md").read_text()
    section = docs.split("## Files", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([a-z_0-9]+)`", section))
    assert set(SUMMARY_FIELDS) | set(LAYER_FIELDS) | set(TOTAL_FIELDS) | set(OUTPUT_FIELDS) \
        <= documented
