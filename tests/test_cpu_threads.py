"""training.cpu_threads: the OpenMP wait policy is set before torch loads, only where the user
set none, and the entry scripts import training before anything that loads torch."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training import cpu_threads

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("env, torch_loaded, expected", [
    ({}, False, ("PASSIVE", "OMP_WAIT_POLICY=PASSIVE, GOMP_SPINCOUNT=10000")),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, False, ("ACTIVE", "OMP_WAIT_POLICY=ACTIVE (yours)")),
    ({"GOMP_SPINCOUNT": "300000"}, False, (None, "GOMP_SPINCOUNT=300000 (yours)")),
    ({}, True, (None, "OpenMP's default wait (torch was imported before training)")),
], ids=["default", "user-policy", "user-spincount", "torch-first"])
def test_the_policy_is_set_only_where_the_user_set_none_and_torch_is_not_loaded(
        monkeypatch, env, torch_loaded, expected):
    monkeypatch.setattr(os, "environ", dict(env))  # the process's own stays as it is
    if not torch_loaded:
        monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(cpu_threads, "_outcome", cpu_threads.describe())
    cpu_threads.apply_thread_policy()
    assert (os.environ.get("OMP_WAIT_POLICY"), cpu_threads.describe()) == expected


def test_openmp_takes_the_policy_when_torch_loads_after_training():
    clean = {k: v for k, v in os.environ.items() if k not in cpu_threads.WAIT_VARIABLES}
    # libgomp (PyTorch's OpenMP on Linux) shows the spin count it took from the environment
    shown = subprocess.run([sys.executable, "-c", "import training"], cwd=REPO,
                           env={**clean, "OMP_DISPLAY_ENV": "verbose"}, capture_output=True,
                           text=True, timeout=120).stderr
    if "GOMP_SPINCOUNT" not in shown:
        pytest.skip("PyTorch's OpenMP here is not libgomp")
    assert "GOMP_SPINCOUNT = '10000'" in shown  # a short spin, then sleep


@pytest.mark.parametrize("script", ["mnist_LeNet.py", "cifar10_VGG9.py", "cifar10_ResNet11.py",
                                    "svhn_ResNet13.py", "utils.py"])
def test_entry_scripts_import_training_first(script):
    tree = ast.parse((REPO / script).read_text())
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    first = imports[0]
    assert (first.module if isinstance(first, ast.ImportFrom) else first.names[0].name) == \
        "training"
