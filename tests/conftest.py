"""Shared test setup."""
import os

import pytest
import torch

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
