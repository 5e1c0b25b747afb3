"""The examples run as a user runs them, from the repository root, and check what they say."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_example(script, cache):
    # PYTHONPATH stands in for the editable install, so that the test also runs without it
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                   "SPIKING_KERNEL_CACHE": str(cache)}
    result = subprocess.run([sys.executable, f"examples/{script}"], cwd=REPO,
                            env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def kernel_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("kernels")


def checked_line(lines, neuron, parameters):
    (line,) = [line for line in lines if line.startswith("checked")]
    assert line.startswith(f"checked {len(parameters)} parameter gradients "
                           f"({', '.join(parameters)}) of a float64 LeNet with {neuron}")
    return float(line.rsplit(" ", 1)[1])


def test_the_custom_neuron_example_trains_and_checks_its_gradients(kernel_cache):
    first = run_example("custom_neuron.py", kernel_cache)
    lines = first.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:6]] == [f"step {n}" for n in range(1, 7)]
    weights = ["cnn1.weight", "cnn2.weight", "fc0.weight", "fc1.weight"]
    assert checked_line(lines, "SoftResetLIF", weights) <= 1e-9
    assert "cannot run" not in first.stderr
    # the fused scans generated from the class: compiled once, then taken from the cache
    compiled = [line for line in first.stderr.splitlines() if "SoftResetLIF" in line]
    assert compiled and all(line.startswith("spiking: compiled the fused scans of SoftResetLIF")
                            for line in compiled)
    assert "compiled" not in run_example("custom_neuron.py", kernel_cache).stderr


def test_the_plif_example_learns_its_leaks_and_checks_their_gradients(kernel_cache):
    lines = run_example("plif_neuron.py", kernel_cache).stdout.splitlines()
    (leaks,) = [line for line in lines if line.startswith("learned leaks")]
    values = [float(v.split(": ")[1]) for v in leaks.split("{")[1].rstrip("}").split(", ")]
    assert len(values) == 3 and all(0.9 < v < 0.99 for v in values)
    parameters = ["cnn1.weight", "lif1.leak_logit", "cnn2.weight", "lif2.leak_logit",
                  "fc0.weight", "lif_fc0.leak_logit", "fc1.weight"]
    assert checked_line(lines, "PLIFNeuron", parameters) <= 1e-9


def test_the_surrogate_example_checks_its_gradients_and_is_the_class_the_docs_show(kernel_cache):
    lines = run_example("surrogate_neuron.py", kernel_cache).stdout.splitlines()
    weights = ["cnn1.weight", "cnn2.weight", "fc0.weight", "fc1.weight"]
    assert checked_line(lines, "FastSigmoidLIF", weights) <= 1e-9
    docs = (REPO / "docs" / "extending.md").read_text()
    shown = docs.split("```python\nclass FastSigmoidLIF")[1].split("```")[0]
    assert "class FastSigmoidLIF" + shown in (REPO / "examples" / "surrogate_neuron.py").read_text()
