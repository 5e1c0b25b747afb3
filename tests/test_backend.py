"""The backend choice: one setting, reported, and never a silent fallback."""
import warnings

import pytest
import torch

from spiking import backend, cpu_kernels
from spiking import functional as SF


def test_auto_takes_the_cpu_kernels_for_cpu_tensors_and_torch_elsewhere():
    with backend.use_backend("auto"):
        expected = "cpu" if cpu_kernels.available() else "torch"
        assert backend.backend_for("cpu") == expected
        assert backend.backend_for("meta") == "torch"
        assert backend.describe("cpu").startswith(f"spiking backend {expected}: ")


def test_use_backend_chooses_and_restores():
    before = backend.requested_backend()
    with backend.use_backend("torch"):
        assert backend.requested_backend() == "torch"
        assert backend.backend_for("cpu") == "torch"
        assert not cpu_kernels.usable(torch.zeros(3))
    assert backend.requested_backend() == before


def test_an_unknown_backend_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown spiking backend 'fast'; choose auto or one of"):
        backend.set_backend("fast")


def test_the_environment_variable_chooses_at_import(monkeypatch):
    monkeypatch.setenv("SPIKING_BACKEND", "Torch")
    import importlib

    fresh = importlib.reload(backend)
    try:
        assert fresh.requested_backend() == "torch"
    finally:
        monkeypatch.delenv("SPIKING_BACKEND")
        importlib.reload(backend)


def test_a_backend_that_cannot_run_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(backend, "_warned", set())
    with backend.use_backend("cpu"):
        with pytest.warns(RuntimeWarning, match="backend 'cpu' cannot run here .*not meta"):
            assert backend.backend_for("meta") == "torch"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert backend.backend_for("meta") == "torch"


@pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler")
def test_the_choice_decides_which_code_runs(monkeypatch):
    calls = []
    original = cpu_kernels.lif_scan
    monkeypatch.setattr(cpu_kernels, "lif_scan", lambda *a, **k: calls.append(1) or original(*a, **k))
    current = torch.rand(3, 4)
    with backend.use_backend("torch"):
        loops = SF.lif_scan(current, 0.5, 0.9)
    assert not calls
    with backend.use_backend("cpu"):
        fused = SF.lif_scan(current, 0.5, 0.9)
    assert calls and torch.equal(loops, fused)


def test_auto_keeps_the_pytorch_loops_on_cuda_until_triton_is_validated_on_a_gpu():
    with backend.use_backend("auto"):
        assert backend.backend_for("cuda") == "torch"


def test_triton_by_name_falls_back_with_a_warning_where_it_cannot_run(monkeypatch):
    monkeypatch.setattr(backend, "_warned", set())
    with backend.use_backend("triton"):
        with pytest.warns(RuntimeWarning, match="backend 'triton' cannot run here"):
            assert backend.backend_for("meta") == "torch"
