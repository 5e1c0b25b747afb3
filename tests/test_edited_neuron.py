"""An edited copy of LIFNeuron's methods runs its own equations on the fused backends.

The ``cpu`` (C) and ``triton`` scans are generated from a neuron's methods
(``spiking/backends/codegen``) and cached: an edit must give new kernels, never the LIF's, even
when the edited class keeps the name ``LIFNeuron`` (the kernels are named after the class) or
when LIFNeuron's own method is replaced after its kernels were built. Each fused result equals
the ``reference`` (one autograd node per step) and ``torch`` loops, and differs from the
unedited LIF's. Triton runs in its CPU interpreter where there is no GPU (tests/conftest.py).
"""
from __future__ import annotations

import logging

import pytest
import torch
from torch import Tensor

import spiking
from spiking import backends
from spiking.backends import cpu_kernels

CPU = torch.device("cpu")
FUSED = [pytest.param("cpu", marks=pytest.mark.skipif(not cpu_kernels.available(),
                                                      reason="no C compiler")),
         pytest.param("triton", marks=pytest.mark.skipif(
             backends.unavailable("triton", CPU) is not None,
             reason=f"{backends.unavailable('triton', CPU)}"))]


class LIFNeuron(spiking.LIFNeuron):
    """An edited copy, kernel names and all: ``u_t = 0.8 m_{t-1} + 1.5 I_t`` (the LIF's:
    ``m_{t-1} + I_t``) and the soft reset ``m_t = l (u_t - theta s_t)`` (the LIF's: hard)."""

    def charge(self, membrane: Tensor, current: Tensor) -> Tensor:
        return 0.8 * membrane + 1.5 * current

    def reset(self, potential: Tensor, spikes: Tensor) -> Tensor:
        return self.leak * (potential - self.threshold * spikes.to(potential.dtype))


def soft_reset(self, potential: Tensor, spikes: Tensor) -> Tensor:
    """LIFNeuron.reset edited in place: the soft reset."""
    return self.leak * (potential - self.threshold * spikes.to(potential.dtype))


@pytest.fixture
def refusals(caplog):
    """The log lines of a backend that could not run a neuron and handed it to torch."""
    backends._told.clear()
    caplog.set_level(logging.WARNING, logger="spiking")
    return lambda: [r.getMessage() for r in caplog.records if "cannot run" in r.getMessage()]


def run(neuron: torch.nn.Module, backend: str) -> tuple[Tensor, Tensor]:
    """Spikes ``[T, B, F]`` and the current's gradient of ``neuron`` on seeded currents,
    T = 6, B = 2, F = 5, float64 (the tiny shapes Triton's interpreter runs quickly)."""
    gen = torch.Generator().manual_seed(0)
    current = (torch.rand(6, 2, 5, generator=gen, dtype=torch.float64) * 1.2).requires_grad_()
    grad = torch.randn(6, 2, 5, generator=gen, dtype=torch.float64)
    with backends.use_backend(backend):
        spikes = neuron(current)
        spikes.backward(grad)
    return spikes.detach(), current.grad


def assert_same(fused: tuple[Tensor, Tensor], expected: tuple[Tensor, Tensor]) -> None:
    assert torch.equal(fused[0], expected[0])
    torch.testing.assert_close(fused[1], expected[1], rtol=1e-12, atol=0)


def assert_runs_its_own_equations(make, backend: str, refusals, launches: list[str]) -> None:
    fused = run(make(), backend)
    for loop in ("reference", "torch"):
        assert_same(fused, run(make(), loop))
    assert fused[0].any() and fused[1].abs().sum() > 0  # spikes and gradients to compare
    assert not refusals(), refusals()  # the fused scans ran it, not a fallback to torch
    if backend == "triton":
        assert "scan_forward" in launches and "scan_backward" in launches
    lif = run(spiking.LIFNeuron(1.0, 0.9), backend)
    assert not torch.equal(fused[0], lif[0])


@pytest.mark.parametrize("backend", FUSED)
def test_an_edited_copy_named_lifneuron_runs_its_own_equations(backend, refusals,
                                                              launches):
    run(spiking.LIFNeuron(1.0, 0.9), backend)  # the LIF's kernels built and cached first
    assert LIFNeuron.__name__ == spiking.LIFNeuron.__name__
    assert_runs_its_own_equations(lambda: LIFNeuron(1.0, 0.9), backend, refusals,
                                  launches)


@pytest.mark.parametrize("backend", FUSED)
def test_lifneurons_reset_edited_in_place_runs_the_new_equation(backend, refusals,
                                                               launches, monkeypatch):
    unedited = run(spiking.LIFNeuron(1.0, 0.9), backend)  # cached with the original reset
    monkeypatch.setattr(spiking.LIFNeuron, "reset", soft_reset)
    edited = run(spiking.LIFNeuron(1.0, 0.9), backend)
    for loop in ("reference", "torch"):
        assert_same(edited, run(spiking.LIFNeuron(1.0, 0.9), loop))
    assert not torch.equal(edited[0], unedited[0])
    assert not refusals(), refusals()
    if backend == "triton":
        assert launches.count("scan_forward") >= 2
