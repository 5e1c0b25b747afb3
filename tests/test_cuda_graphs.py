"""The ``graphs`` backend's buffers and loops, on the CPU.

A CUDA graph cannot be captured without a GPU; here an eager stand-in takes its place (it runs
the captured function again on the same fixed buffers at every replay), so what the backend
adds to the ``torch`` loops is tested: the copies into and out of the buffers, the graphs kept
per neuron and shapes, chunk after chunk, forward and backward. tests/test_parity.py runs the
real capture against the reference on a GPU.
"""
from __future__ import annotations

import logging

import pytest
import torch

from benchmarks.count_launches import replayed_eagerly
from spiking import LIFNeuron, backends
from spiking.backends import cuda_graphs
from test_parity import build, input_spikes

F64 = torch.float64


@pytest.fixture
def captures(monkeypatch):
    """Graphs "captured" on CPU tensors by the stand-in; the captures made, counted."""
    made = []

    def counted(function, inputs):
        made.append(tuple(t.shape for t in inputs))
        return replayed_eagerly(function, inputs)

    monkeypatch.setitem(cuda_graphs.CAPTURES, "cpu", counted)
    cuda_graphs.forget_graphs()
    backends.unavailable.cache_clear()
    yield made
    cuda_graphs.forget_graphs()
    backends.unavailable.cache_clear()


def _step(arch: str, backend: str, time_chunk: int):
    model, gen = build(arch, seed=3)
    model.time_chunk = time_chunk
    spikes = input_spikes(arch, gen, time_steps=6)
    torch.manual_seed(0)  # the same dropout masks
    with backends.use_backend(backend):
        out = model(spikes)
        (out ** 2).sum().backward()
    return out, {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("arch", ["lenet", "resnet11"])
def test_the_replayed_loops_equal_the_torch_backend(captures, arch):
    out, grads = _step(arch, "graphs", time_chunk=2)
    expected_out, expected_grads = _step(arch, "torch", time_chunk=2)
    assert out.abs().sum() > 0
    assert torch.allclose(out, expected_out, atol=1e-12, rtol=0)
    assert all(g.abs().sum() > 0 for g in grads.values())
    for name, grad in grads.items():
        assert torch.allclose(grad, expected_grads[name], atol=1e-9, rtol=0), name


def test_a_graph_is_captured_once_per_neuron_and_shapes(captures):
    _step("lenet", "graphs", time_chunk=2)
    first = len(captures)
    assert first > 0
    _step("lenet", "graphs", time_chunk=2)
    assert len(captures) == first  # 3 chunks, 2 steps: every chunk replays the same graphs


def test_a_neuron_whose_parameters_train_runs_on_torch_with_one_line(captures, caplog):
    caplog.set_level(logging.WARNING, logger="spiking")
    neuron = LIFNeuron(1.0, 0.9)
    neuron.leak = torch.nn.Parameter(torch.tensor(0.9, dtype=F64))
    current = torch.rand(3, 2, 4, dtype=F64, requires_grad=True)
    with backends.use_backend("graphs"):
        neuron(current).sum().backward()
    assert neuron.leak.grad is not None and not captures
    assert "trained parameters" in caplog.text


def test_on_cpu_tensors_without_a_capture_it_refuses():
    backends.unavailable.cache_clear()
    assert "CUDA tensors only" in backends.unavailable("graphs", torch.device("cpu"))
