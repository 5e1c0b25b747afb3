"""Shared test setup."""
import os

import pytest
import torch

from spiking.backends import triton_kernels

# Without a GPU, the triton backend's kernels run in Triton's CPU interpreter, which triton reads
# when the kernels are first imported: before any test runs.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and results do not depend on the core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def launches(monkeypatch):
    """The names of the Triton kernels launched during the test."""
    names = []
    original = triton_kernels.launch

    def counted(kernel, *args, **kwargs):
        names.append(kernel.fn.__name__)
        return original(kernel, *args, **kwargs)

    monkeypatch.setattr(triton_kernels, "launch", counted)
    return names
