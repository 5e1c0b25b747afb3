"""The examples run as a user runs them, from the repository root, and check what they say."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_custom_neuron_example_trains_and_checks_its_gradients():
    # PYTHONPATH stands in for the editable install, so that the test also runs without it
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "examples/custom_neuron.py"], cwd=REPO,
                            env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:6]] == [f"step {n}" for n in range(1, 7)]
    assert lines[6].startswith("checked 4 parameter gradients (cnn1.weight, cnn2.weight, "
                               "fc0.weight, fc1.weight) of a float64 LeNet with SoftResetLIF")
    difference = float(lines[6].rsplit(" ", 1)[1])
    assert difference <= 1e-9
    assert result.stderr.strip() == (
        "spiking: backend 'cpu' cannot run this (it has no kernel for SoftResetLIF); backend "
        "'torch' runs it, with the same results, more slowly")
