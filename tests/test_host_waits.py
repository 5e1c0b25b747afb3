"""No host read of device data in a training step: each one would make the host wait for the
GPU. Under FakeTensorMode a tensor has shapes but no values, so any read of a value
(``.item()``, ``if tensor:``, ``.tolist()``) raises; the step must run through without one."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

import models
from spiking import PoissonEncoder, backends
from spiking.backends import pytorch, triton_kernels


def _step(device: str, backward: bool, amp: bool = False) -> torch.Tensor:
    """A ResNet11 training step (width 1/32, T = 2, B = 2) on fake tensors of ``device``."""
    torch.manual_seed(0)
    model = models.get_model("resnet11", width=1 / 32)
    with backends.use_backend("torch"), FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to(device)
        images = torch.randn(2, *model.input_shape, device=device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            out = model(PoissonEncoder(2, 1.0)(images))
        if backward:
            F.mse_loss(out.float(), torch.zeros_like(out), reduction="sum").backward()
            assert all(p.grad is not None for p in model.parameters())
        return out


def test_the_forward_on_cuda_reads_nothing_back():
    """The CUDA code paths (all T in one chunk, the torch backend ``auto`` takes there)."""
    assert _step("cuda", backward=False).device.type == "cuda"


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "autocast"])
def test_the_forward_and_backward_read_nothing_back(amp):
    """The same synapse code with its backward: autograd's engine needs a real GPU for fake
    CUDA tensors, so the backward runs on fake CPU tensors (the torch backend, as on CUDA;
    autocast in bfloat16, which needs a real GPU on CUDA too)."""
    _step("cpu", backward=True, amp=amp)


def test_a_host_read_fails_the_step(monkeypatch):
    """The harness catches a read: a synapse backward that asks a value on the host."""
    unpack = pytorch.unpack_spikes

    def reads_back(packed, dtype):
        if packed[1] is not None and packed[1] == 1:
            return packed[0].to(dtype)
        return unpack(packed, dtype)

    monkeypatch.setattr(pytorch, "unpack_spikes", reads_back)
    with pytest.raises(DataDependentOutputException):
        _step("cpu", backward=True)


def test_the_triton_packing_reads_nothing_back(monkeypatch):
    """The packing's host code after its kernel (a fake tensor cannot run the kernel itself)."""
    if isinstance(triton_kernels._jit(), str):
        pytest.skip(triton_kernels._jit())
    monkeypatch.setattr(triton_kernels, "launch", lambda *args, **kwargs: None)
    with FakeTensorMode():
        for dtype in (torch.float32, torch.float64):
            codes, scale = triton_kernels.pack_spikes(torch.zeros(3, 4, dtype=dtype,
                                                                  device="cuda"))
            assert codes.dtype == torch.int8 and scale.dtype == dtype and scale.dim() == 0
