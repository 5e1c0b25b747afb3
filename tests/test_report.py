"""Summary fields, table, JSON (and the README's list of its fields), the optional plots of the
spike statistics; training curves."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from training import plots
from models import get_model
from spiking import PoissonEncoder, SpikeMonitor
from spiking.report import (LAYER_FIELDS, SUMMARY_FIELDS, TOTAL_FIELDS, format_table,
                            raster_sample, summarize, write_json)


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
    assert [row["name"] for row in loaded["layers"]] == [
        "input", "lif1", "pool1", "lif2", "pool2", "lif_fc0"]


def test_table_lists_every_layer_and_the_totals(summary):
    table = format_table(summary)
    for name in ("input", "lif1", "pool1", "lif2", "pool2", "lif_fc0", "total", "cnn1"):
        assert name in table
    assert "T = 6, 3 images" in table
    assert "ANN/SNN" in table and "4.6 pJ" in table


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


def test_without_matplotlib_nothing_is_drawn(summary, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert plots.plot_spike_stats(summary, tmp_path / "stats.png") is None
    assert plots.plot_training_curves(_write_curves(tmp_path / "log.csv"), tmp_path / "c.png") is None
    assert not list(tmp_path.glob("*.png"))
    assert "pip install matplotlib" in plots.MATPLOTLIB_HINT


def test_readme_documents_every_json_field():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Spike activity and energy", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([a-z_0-9]+)`", section))
    assert set(SUMMARY_FIELDS) | set(LAYER_FIELDS) | set(TOTAL_FIELDS) <= documented
