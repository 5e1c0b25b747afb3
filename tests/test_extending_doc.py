"""docs/extending.md runs as written: every ```python block, in order, in one namespace (as a
reader pastes them into one session); its data-set script trains from a directory outside the
repository (its network-registering script: tests/test_registries.py)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
from training import datasets
from training.cpu_threads import WAIT_VARIABLES

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "extending.md"
TINY = ["-T", "2", "--width", "0.125", "-b", "4", "--test-batch-size", "4", "-j", "0",
        "--epochs", "1"]
# the worktree's packages, whichever copy is installed; one thread, as tests/test_scripts.py
ENV = {**{k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES},
       "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(REPO)}


def python_blocks(path: Path = DOC) -> list[str]:
    """The ```python blocks of ``path``, in order."""
    return re.findall(r"^```python\n(.*?)^```$", path.read_text(), re.S | re.M)


def script_block(marker: str) -> str:
    """The one python block of docs/extending.md that is a whole script holding ``marker``."""
    (block,) = [b for b in python_blocks() if marker in b and '__name__ == "__main__"' in b]
    return block


def run_outside(directory: Path, name: str, text: str, *argv: str
                ) -> subprocess.CompletedProcess:
    """Write ``text`` to ``directory/name`` (outside the repository) and run it there."""
    script = directory / name
    script.write_text(text)
    return subprocess.run([sys.executable, str(script), *argv], cwd=directory, env=ENV,
                          text=True, capture_output=True, timeout=300)


@pytest.fixture
def registries():
    """MODELS and DATASETS as they were, after the test (the snippets register entries)."""
    saved_models, saved_datasets = dict(models.MODELS), dict(datasets.DATASETS)
    yield
    models.MODELS.clear(), models.MODELS.update(saved_models)
    datasets.DATASETS.clear(), datasets.DATASETS.update(saved_datasets)


def test_every_python_block_runs_in_order(registries, monkeypatch, tmp_path):
    blocks = python_blocks()
    assert len(blocks) >= 8
    monkeypatch.chdir(REPO)  # as the doc says: run from the repository root
    torch.manual_seed(0)
    namespace: dict = {"__name__": "extending_md"}  # the scripts' main() is not called here
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"docs/extending.md, python block {number}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"python block {number} fails:\n{block}") from error
    assert {"tiny", "lenet_soft"} <= set(models.MODELS)
    assert "my_digits" in datasets.DATASETS


def write_digits(folder: Path, images: int) -> None:
    """The files my_digits_LeNet.py reads: uint8 images [N, 1, 28, 28], labels [N]."""
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        pixels = (torch.rand(images, 1, 28, 28, generator=gen) * 255).to(torch.uint8)
        torch.save((pixels, torch.arange(images) % 10), folder / f"{split}.pt")


def test_the_registered_data_set_trains_from_a_script_outside_the_repository(tmp_path):
    text = script_block('DATASETS["my_digits"]')
    write_digits(tmp_path / "data" / "my_digits", images=8)
    out = tmp_path / "runs"
    result = run_outside(tmp_path, "my_digits_LeNet.py", text, "--data", str(tmp_path / "data"),
                         "--no-download", *TINY, "--out-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^Epoch 1/1 \| lr .* test loss", result.stdout, re.M)
    assert (out / "checkpointT1_my_digits_lenet.pth.tar").is_file()
    missing = run_outside(tmp_path, "my_digits_LeNet.py", text, "--data", str(tmp_path / "none"),
                          "--no-download", *TINY, "--out-dir", str(tmp_path / "runs2"))
    errors = [line for line in missing.stderr.splitlines() if "error:" in line]
    assert missing.returncode == 2 and len(errors) == 1 and "my_digits/train.pt" in errors[0]
