"""The C library of the ``cpu`` backend: arguments it refuses, and what happens without a
compiler or without OpenMP. Its kernels' bits are tested in tests/test_kernels.py."""
import logging

import pytest
import torch

from spiking import LIFNeuron, backends
from spiking.backends import cpu_kernels, event_kernels

pytestmark = pytest.mark.skipif(not cpu_kernels.available(),
                                reason="no C compiler: the fused CPU kernels cannot be built")


def test_arguments_that_would_overrun_a_buffer_are_refused():
    current = torch.rand(3, 4, 5)
    with pytest.raises(ValueError, match="magnitude has shape"):
        cpu_kernels.poisson_spikes(current.clone(), torch.rand(4, 6), torch.ones(4, 5))
    with pytest.raises(ValueError, match="sign has dtype"):
        cpu_kernels.poisson_spikes(current.clone(), torch.rand(4, 5), torch.ones(4, 5).double())
    with pytest.raises(ValueError, match="x is not contiguous"):
        cpu_kernels.pack_spikes(current.transpose(1, 2))
    with pytest.raises(ValueError, match="float32 or float64 CPU tensors, not torch.float16"):
        cpu_kernels.avg_pool(current.half(), 2)
    with pytest.raises(ValueError, match="a 2x2 pool of 4x5 does not give 3x2"):
        cpu_kernels.avg_pool_backward(torch.rand(3, 3, 2), 2, 4, 5)


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """Build the C library anew into ``tmp_path`` for the test, then restore the usual one."""
    monkeypatch.setenv("SPIKING_KERNEL_CACHE", str(tmp_path / "cache"))
    libraries = (cpu_kernels._library, event_kernels._library, backends.unavailable)
    for cached in libraries:
        cached.cache_clear()
    backends._told.clear()
    yield tmp_path
    monkeypatch.undo()
    for cached in libraries:
        cached.cache_clear()
    assert cpu_kernels.available()


def test_without_a_compiler_torch_runs_after_one_line(fresh_library, monkeypatch, caplog):
    monkeypatch.setenv("CC", str(fresh_library / "no-such-compiler"))
    caplog.set_level(logging.WARNING, logger="spiking")
    assert not cpu_kernels.available()
    assert "no-such-compiler" in cpu_kernels.build_error()
    current = torch.rand(3, 4, dtype=torch.float64)
    with backends.use_backend("cpu"):
        spikes = LIFNeuron(0.5, 0.9)(current)
        assert torch.equal(spikes, LIFNeuron(0.5, 0.9)(current))
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1  # once, not at every call
    assert "backend 'cpu' cannot run this (its C kernels could not be built" in messages[0]
    assert "no-such-compiler" in messages[0]
    assert not list((fresh_library / "cache").glob("*.so"))


def test_a_compiler_without_openmp_builds_single_threaded_kernels(fresh_library, monkeypatch,
                                                                  caplog):
    compiler = fresh_library / "cc-without-openmp"
    compiler.write_text('#!/bin/sh\ncase " $* " in *" -fopenmp "*) exit 1;; esac\nexec cc "$@"\n')
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    assert cpu_kernels.available()
    assert len(list((fresh_library / "cache").glob("*.so"))) == 1
    torch.set_num_threads(2)
    current = torch.rand(4, 40000, dtype=torch.float64)
    results = []
    for name in ("cpu", "torch"):
        with backends.use_backend(name):
            results.append(LIFNeuron(0.7, 0.9)(current))
    assert torch.equal(*results)
    assert all(r.getMessage().startswith("spiking: compiled ") for r in caplog.records)
