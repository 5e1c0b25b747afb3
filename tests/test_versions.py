"""The versions the code needs: the floor of requirements.txt is the one the scripts check,
an older torch or a torchvision built for another torch ends a script in one ``error:`` line,
and on PyTorch's CPU-only wheels (no triton) every Triton test skips with its reason."""
from __future__ import annotations

import builtins
import re
import subprocess
import sys
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from test_resume import LENET

from training import engine, versions

REPO = Path(__file__).resolve().parent.parent


def test_requirements_state_the_floor_the_scripts_check():
    text = (REPO / "requirements.txt").read_text()
    torch_floor = re.search(r"^torch>=([\d.]+)$", text, re.MULTILINE)[1]
    assert versions._release(torch_floor) == versions.TORCH_FLOOR
    assert versions._release(torch.__version__) >= versions.TORCH_FLOOR
    assert versions._release(version("torchvision")) >= versions._release(
        re.search(r"^torchvision>=([\d.]+)$", text, re.MULTILINE)[1])
    # what the floor is for
    assert callable(torch.get_autocast_dtype) and torch.amp.GradScaler


def test_an_older_torch_ends_a_script_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch, "__version__", "2.3.1+cpu")
    with pytest.raises(SystemExit) as stop:
        engine.main(LENET, [])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: torch 2.3.1+cpu is older than the 2.4 this project needs")


def test_a_torchvision_for_another_torch_ends_a_script_in_one_line(monkeypatch, capsys, tmp_path):
    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "torchvision" or name.startswith("torchvision."):
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.setattr(builtins, "__import__", broken)
    settings = replace(LENET, synthetic=False, download=False, data_dir=str(tmp_path),
                       out_dir=str(tmp_path / "out"))
    with pytest.raises(SystemExit) as stop:
        engine.main(settings, [])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"error: torchvision {version('torchvision')} does not match torch {torch.__version__}")
    assert "torchvision::nms" in err


def test_without_triton_the_triton_tests_skip_with_their_reason():
    """PyTorch's CPU wheels bring no triton: ``sys.modules['triton'] = None`` makes its import
    fail as it does there."""
    files = ["tests/test_backends.py", "tests/test_triton.py", "tests/test_host_waits.py",
             "tests/test_kernels.py", "tests/test_parity.py", "tests/test_count_launches.py",
             "tests/test_edited_neuron.py"]
    code = ("import sys; sys.modules['triton'] = None; import pytest; "
            "sys.exit(pytest.main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "-q", "-rs", "-p", "no:cacheprovider",
                           "-k", "triton or backend or host", *files], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    skips = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skips and all("triton cannot be imported" in line or "no triton" in line
                         or "replays CUDA graphs" in line  # on any CPU, triton or not
                         for line in skips), skips
    assert "." in done.stdout.splitlines()[0]  # and the rest passed
