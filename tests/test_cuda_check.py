"""benchmarks/cuda_check.sh on a machine without a GPU: one line, exit status 2, and the
interpreter found without ``PYTHON`` set (``python``, else ``python3``)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "cuda_check.sh"

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the check "
                                "would run for minutes")


def _run(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env,
                          timeout=120)


def test_without_a_gpu_it_refuses_in_one_line():
    done = _run({**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: no CUDA GPU")


def test_without_python_on_the_path_it_falls_back_to_python3(tmp_path):
    used = tmp_path / "used"
    shim = tmp_path / "python3"
    shim.write_text(f'#!/bin/sh\necho python3 >> "{used}"\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key != "PYTHON"}
    env["PATH"] = f"{tmp_path}:/bin"  # /bin has bash and the tools, no python
    done = _run(env)
    assert done.returncode == 2 and done.stderr.startswith("error: no CUDA GPU")
    assert used.read_text().startswith("python3")
