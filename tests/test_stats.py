"""``--stats`` end to end on synthetic data: the table on stdout, the JSON, the PNGs (or the hint
without matplotlib), the training curves, a bad --raster-layer."""
from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest

from training import Experiment, main, run

TINY = Experiment(tag="tiny", dataset="mnist", arch="lenet", time_steps=4, input_scale=0.5,
                  width=0.125, lr=0.0085, epochs=1, batch_size=8, test_batch_size=16,
                  synthetic=True, synthetic_size=32, print_freq=1000, workers=0, seed=5)

LENET_LAYERS = ["input", "lif1", "pool1", "lif2", "pool2", "lif_fc0"]


def _no_matplotlib(monkeypatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_training_with_stats_then_evaluate_with_stats(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    run(replace(TINY, out_dir=str(out), stats=True))
    printed = capsys.readouterr().out
    assert "Spike activity and synaptic operations per image (T = 4, 10 images)" in printed
    assert (out / "spike_stats_tiny_synthetic.png").exists()
    assert (out / "curves_tiny_synthetic.png").exists()
    trained = json.loads((out / "spike_stats_tiny_synthetic.json").read_text())
    assert trained["meta"]["checkpoint"].endswith("checkpointT1_tiny_synthetic.pth.tar")

    checkpoint = out / "checkpointT1_tiny_synthetic.pth.tar"
    main(TINY, ["--resume", str(checkpoint), "--evaluate", "--stats", "--out-dir", str(out),
                "--synthetic", "--raster-layer", "pool1", "--mac-energy", "3.0",
                "--ac-energy", "1.0", "-T", "4"])
    printed = capsys.readouterr().out
    for name in LENET_LAYERS + ["total", "ANN/SNN"]:
        assert name in printed
    summary = json.loads((out / "spike_stats_tiny_synthetic.json").read_text())
    assert [row["name"] for row in summary["layers"]] == LENET_LAYERS
    assert summary["raster"]["layer"] == "pool1"
    assert summary["energy_per_op_pj"]["mac"] == 3.0 and summary["energy_per_op_pj"]["ac"] == 1.0
    assert summary["images"] == 10 and summary["time_steps"] == 4
    # the same weights and test encoder seed: evaluation repeats the last epoch's test pass
    counts = ("neurons", "spikes_per_image", "targets", "snn_ac", "ann_mac", "ann_ac")
    assert [[row[k] for k in counts] for row in summary["layers"]] == \
        [[row[k] for k in counts] for row in trained["layers"]]
    assert summary["totals"]["ann_energy_uj"] == pytest.approx(
        (summary["totals"]["ann_mac"] * 3.0 + summary["totals"]["ann_ac"]) * 1e-6)


def test_without_matplotlib_the_numbers_are_still_written(tmp_path, capsys, monkeypatch):
    _no_matplotlib(monkeypatch)
    run(replace(TINY, out_dir=str(tmp_path), stats=True))
    printed = capsys.readouterr().out
    assert "pip install matplotlib" in printed
    assert (tmp_path / "spike_stats_tiny_synthetic.json").exists()
    assert not list(tmp_path.glob("*.png"))


def test_unknown_raster_layer_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(TINY, ["--stats", "--raster-layer", "lif9", "--out-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "choose from input, lif1, pool1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())

