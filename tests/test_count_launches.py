"""The operations per training step that ``auto`` dispatches on CUDA (benchmarks/count_launches.py).

The count runs on CPU tensors standing in for CUDA ones; the first tests check that stand-in
against fake CUDA tensors (no GPU needed), the last ones hold the count at T = 100 to a limit.
"""
from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

import models
from benchmarks.count_launches import (CUDA, OperationCounter, count_training_step, cuda_backend,
                                       main)
from spiking import PoissonEncoder, backends

# Measured at T = 100: LeNet 9,227 (227 + 90 T), ResNet11 21,418 (618 + 208 T); the limits
# leave a little room.
LIMITS_AT_100 = {"lenet": 9_300, "resnet11": 21_600}
# Backend graphs, measured: LeNet 305, ResNet11 804 operations and replays at any T.
GRAPHS_LIMITS = {"lenet": 320, "resnet11": 820}


def test_auto_takes_the_torch_backend_on_cuda():
    with backends.use_backend("auto"):
        assert backends.preferred(CUDA) == "torch"
    assert cuda_backend("auto") == "torch"
    assert cuda_backend("triton") == "triton"


def _forward_and_update_ops(device: torch.device, backend_name: str) -> tuple[Counter, Counter]:
    """The operations of LeNet's forward (loss included) and of its SGD update, on ``device``,
    each counted after a first run. (The backward cannot run on fake CUDA tensors without a
    GPU: autograd asks the CUDA driver for its streams. It runs the kernel table the forward
    chose, whatever the device.)"""
    torch.manual_seed(0)
    with device:
        model = models.get_model("lenet", width=0.1)
        images = torch.rand(2, *model.input_shape)
        target = torch.zeros(2, model.num_classes)
    model.time_chunk = 3
    encoder = PoissonEncoder(3, 0.5)
    # foreach named: PyTorch takes it by default for CUDA parameters, not for fake ones
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, weight_decay=5e-4, foreach=True)
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)
    forward, update = OperationCounter(), OperationCounter()
    with backends.use_backend(backend_name):
        for counter in (OperationCounter(), forward):
            with counter:
                F.mse_loss(model(encoder(images)), target, reduction="sum")
        for counter in (OperationCounter(), update):
            with counter:
                optimizer.step()
    return forward.ops, update.ops


def test_the_cpu_stand_in_dispatches_what_cuda_tensors_do():
    stand_in = _forward_and_update_ops(torch.device("cpu"), cuda_backend("auto"))
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake_cuda = _forward_and_update_ops(CUDA, "auto")
    assert stand_in == fake_cuda
    assert sum(stand_in[0].values()) > 100 and sum(stand_in[1].values()) == 2


@pytest.mark.parametrize("arch, steps", [("lenet", (2, 3, 100)), ("resnet11", (2, 3, 4))])
def test_auto_on_cuda_at_100_steps(arch, steps):
    """The count grows by the same number of operations per time step (ResNet11 is counted at
    small T only, to keep the test fast, and extrapolated); at T = 100 it stays within the
    limit."""
    counts = [count_training_step(arch, t, 2, 0.1, "auto").total for t in steps]
    per_step = (counts[1] - counts[0]) // (steps[1] - steps[0])
    fixed = counts[0] - per_step * steps[0]
    assert counts == [fixed + per_step * t for t in steps]
    assert fixed + per_step * 100 <= LIMITS_AT_100[arch]


@pytest.mark.parametrize("arch", ["lenet", "resnet11"])
def test_replayed_graphs_dispatch_the_same_at_any_number_of_steps(arch):
    """The neuron loops replayed as graphs: no operation per time step is left."""
    counts = [count_training_step(arch, t, 2, 0.1, "graphs") for t in (2, 5)]
    assert counts[0].total == counts[1].total <= GRAPHS_LIMITS[arch]
    assert counts[0].graphs == counts[1].graphs > 0


@pytest.mark.skipif(backends.unavailable("triton", torch.device("cpu")) is None,
                    reason="triton can run here; tests/test_versions.py runs this without it")
def test_without_triton_the_count_refuses_triton_in_one_line(capsys):
    assert main(["--arch", "lenet", "-T", "2", "--backends", "auto,triton"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "triton cannot be imported" in err
    assert main(["--arch", "lenet", "--width", "0.1", "-T", "2", "--backends", "auto"]) == 0
    assert "| auto (torch) | 2 |" in capsys.readouterr().out
