"""The registries a script extends before it calls ``main``: networks (``models.MODELS``) and
data sets (``training.datasets.DATASETS``); a name in neither is one ``error:`` line, exit 2."""
from __future__ import annotations

import gzip
import os
import re
import struct
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from test_extending_doc import script_block
from training.cpu_threads import WAIT_VARIABLES
from training.data import build_datasets

REPO = Path(__file__).resolve().parents[1]
TINY = ["--synthetic", "--synthetic-size", "16", "-T", "2", "--width", "0.125", "-b", "8",
        "--test-batch-size", "8", "-j", "0", "--epochs", "1"]
# the worktree's packages, whichever copy is installed; one thread, as tests/test_scripts.py
ENV = {**{k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES},
       "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(REPO)}

# docs/extending.md's registration example, a whole script
SOFT_RESET_SCRIPT = script_block('MODELS["lenet_soft"]')


def write_idx_files(folder: Path, images: int, packed: bool) -> dict[str, torch.Tensor]:
    """torchvision's raw layout of an MNIST-like set: four idx ubyte files (gzipped if
    ``packed``) of ``images`` random 28x28 images each; returns the pixels per split."""
    folder.mkdir(parents=True)
    gen, pixels = torch.Generator().manual_seed(0), {}
    for split in ("train", "t10k"):
        pixels[split] = (torch.rand(images, 28, 28, generator=gen) * 255).to(torch.uint8)
        labels = torch.arange(images, dtype=torch.uint8) % 10
        for name, header, data in (
                (f"{split}-images-idx3-ubyte", struct.pack(">IIII", 2051, images, 28, 28),
                 pixels[split]),
                (f"{split}-labels-idx1-ubyte", struct.pack(">II", 2049, images), labels)):
            content = header + data.numpy().tobytes()
            if packed:
                (folder / f"{name}.gz").write_bytes(gzip.compress(content))
            else:
                (folder / name).write_bytes(content)
    return pixels


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


@pytest.mark.parametrize("packed", [False, True], ids=["idx", "idx.gz"])
def test_fashion_mnist_loads_torchvisions_raw_files(tmp_path, packed):
    pixels = write_idx_files(tmp_path / "FashionMNIST" / "raw", images=12, packed=packed)
    import fashion_mnist_LeNet  # an entry script at the root (pytest.ini's pythonpath)

    settings = replace(fashion_mnist_LeNet.EXPERIMENT, data_dir=str(tmp_path), download=False)
    train, test = build_datasets(settings)
    assert len(train) == len(test) == 12
    image, label = test[5]
    assert image.shape == (1, 28, 28) and label == 5
    assert torch.equal(image[0], pixels["t10k"][5].float() / 255)


def test_fashion_mnist_script_trains_on_raw_files(tmp_path):
    write_idx_files(tmp_path / "data" / "FashionMNIST" / "raw", images=8, packed=True)
    out = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, str(REPO / "fashion_mnist_LeNet.py"), "--data", str(tmp_path / "data"),
         "--no-download", "-T", "2", "--width", "0.125", "-b", "4", "--test-batch-size", "4",
         "-j", "0", "--epochs", "1", "--out-dir", str(out)],
        cwd=tmp_path, env=ENV, text=True, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^Epoch 1/1 \| lr .* test loss", result.stdout, re.M)
    assert (out / "checkpointT1_fashion_mnist_lenet.pth.tar").is_file()


def test_the_readmes_fashion_mnist_smoke_run_learns(tmp_path):
    usage = (REPO / "README.md").read_text()
    command = re.search(r"^python (fashion_mnist_LeNet\.py --synthetic .*)$", usage, re.M)
    script, *argv = command.group(1).split()
    result = subprocess.run([sys.executable, str(REPO / script), *argv, "--out-dir",
                             str(tmp_path)], cwd=tmp_path, env=ENV, text=True,
                            capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr
    best = float(re.search(r"best test top-1 ([\d.]+)%", result.stdout).group(1))
    assert best >= 40.0, result.stdout  # chance is 10 %


def test_an_unknown_data_set_is_one_error_line(tmp_path):
    result = run_script(tmp_path, '''
        from dataclasses import replace
        from training import main
        from mnist_LeNet import EXPERIMENT

        main(replace(EXPERIMENT, dataset="fashion"))
    ''', *TINY)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "'fashion'" in errors[0], result.stderr
    assert all(name in errors[0] for name in ("cifar10", "fashion_mnist", "mnist", "svhn"))
