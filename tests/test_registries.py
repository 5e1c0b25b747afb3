"""The registries a script extends before it calls ``main``: networks (``models.MODELS``) and
data sets (``training.datasets.DATASETS``); a name in neither is one ``error:`` line, exit 2."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from training.cpu_threads import WAIT_VARIABLES

REPO = Path(__file__).resolve().parents[1]
TINY = ["--synthetic", "--synthetic-size", "16", "-T", "2", "--width", "0.125", "-b", "8",
        "--test-batch-size", "8", "-j", "0", "--epochs", "1"]
# the worktree's packages, whichever copy is installed; one thread, as tests/test_scripts.py
ENV = {**{k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES},
       "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(REPO)}

SOFT_RESET_SCRIPT = '''
    from training import main

    from functools import partial

    import torch
    from models import MODELS, LeNet
    from spiking import LIFNeuron
    from mnist_LeNet import EXPERIMENT


    class SoftResetLIF(LIFNeuron):
        def reset(self, potential, spikes):
            return self.leak * (potential - self.threshold * spikes.to(potential.dtype))

        grad_only_at_spikes = True

        def backward_step(self, grad_spikes, grad_membrane, spikes, scale):
            return torch.where(spikes, scale * grad_spikes, 0.0) + grad_membrane


    MODELS["lenet_soft"] = partial(LeNet, neuron=SoftResetLIF)

    if __name__ == "__main__":
        main(EXPERIMENT)
'''


def run_script(directory: Path, text: str, *argv: str) -> subprocess.CompletedProcess:
    """Write ``text`` to a script in ``directory`` (outside the repository) and run it there."""
    script = directory / "script.py"
    script.write_text(textwrap.dedent(text))
    return subprocess.run([sys.executable, str(script), *argv], cwd=directory, env=ENV,
                          text=True, capture_output=True, timeout=300)


def test_a_network_registered_in_a_script_is_an_arch_choice(tmp_path):
    out = tmp_path / "runs"
    result = run_script(tmp_path, SOFT_RESET_SCRIPT, "-a", "lenet_soft", *TINY,
                        "--out-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "checkpointT1_mnist_lenet_soft_synthetic.pth.tar").is_file()

    unknown = run_script(tmp_path, SOFT_RESET_SCRIPT, "-a", "lenet_hard", *TINY)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    errors = [line for line in unknown.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "lenet_hard" in errors[0], unknown.stderr
    assert all(name in errors[0] for name in ("lenet", "lenet_soft", "resnet13", "vgg9"))
