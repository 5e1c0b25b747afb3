"""The ``triton`` backend launches one kernel per layer operation, whatever T is.

The kernels run here in Triton's CPU interpreter (tests/conftest.py sets ``TRITON_INTERPRET``
where no GPU is present); their bits against the neurons' own methods are tested in
tests/test_kernels.py. Skipped where triton cannot run.
"""
import pytest
import torch

from benchmarks.count_launches import count_training_step
from spiking import LIFNeuron, OutputIntegrator, PoolingNeuron, backends
from spiking.backends import triton_kernels

CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(backends.unavailable("triton", CPU) is not None,
                                reason=f"{backends.unavailable('triton', CPU)}")


def test_the_backend_is_chosen_by_name_only():
    with backends.use_backend("auto"):
        assert backends.select(torch.zeros(2, 3)) is not triton_kernels
    with backends.use_backend("triton"):
        assert backends.select(torch.zeros(2, 3)) is triton_kernels


def test_a_layer_is_one_launch_forward_and_one_backward(launches):
    spikes = (torch.rand(4, 2, 2, 6, 6, dtype=torch.float64) < 0.6).double().requires_grad_()
    with backends.use_backend("triton"):
        pooled = PoolingNeuron(0.5)(spikes)
        fired = LIFNeuron(0.5, 0.9)(pooled * 2.0)
        out = OutputIntegrator(0.9)(fired.flatten(2))
        out.sum().backward()
        with torch.no_grad():
            PoolingNeuron(0.5)(spikes)
    # the scans generated from each neuron's methods; the pool itself is one PyTorch op
    assert launches == ["scan_forward", "scan_forward", "scan_integrate", "scan_backward",
                        "scan_backward", "scan_evaluation"]


def test_the_training_step_launches_as_many_kernels_at_any_t():
    """All T in one chunk: the triton backend's operations and launches do not depend on T
    (the PyTorch loops' grow with it)."""
    counts = {(name, t): count_training_step("lenet", t, 2, 0.1, name).total
              for name in ("torch", "triton") for t in (3, 5)}
    assert counts["triton", 3] == counts["triton", 5]
    assert counts["torch", 5] > counts["torch", 3]
    assert counts["triton", 5] < counts["torch", 5]
