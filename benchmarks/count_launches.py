"""Count the device operations of one training step: what bounds a GPU step at small sizes.

One training step (encode, forward, MSE-sum loss, backward, SGD step) of a network with all T
steps in one chunk, as CUDA runs it, counting every ATen operation dispatched (a
``TorchDispatchMode``; each is at most one kernel launch on CUDA, allocations and views
included) and every Triton kernel launched by :mod:`spiking.backends.triton_kernels`. The tensors
are CPU tensors standing in for CUDA ones: a backend is resolved as for a CUDA tensor (``auto``
takes ``torch``, which loops over the time steps in PyTorch) and SGD updates all parameters
with PyTorch's ``foreach`` kernels, its default on CUDA. Nothing else in the step depends on the
device (``tests/test_count_launches.py`` checks the forward and the update against fake CUDA
tensors). ``triton`` runs the kernels in Triton's interpreter (``TRITON_INTERPRET=1``, which
:func:`main` sets before triton is first used), which counts the same launches a GPU would get.

    python benchmarks/count_launches.py --arch resnet11 --width 0.125 -b 2 -T 25 50 100

prints one row per backend and T. A warm-up step runs first (lazily made constants).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import models
from spiking import PoissonEncoder, backends
from spiking.backends import triton_kernels

__all__ = ["CUDA", "OperationCounter", "count_training_step", "cuda_backend"]

CUDA = torch.device("cuda")


class OperationCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched while active (``ops``), and with :meth:`launches`
    the Triton kernels launched (``triton``), not counting what Triton's interpreter itself
    runs to emulate a launch."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.triton = 0
        self._paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # prim: queries of a tensor (its device), dispatched only for tensor subclasses;
        # profiler: the optimizer's record_function marks; neither launches anything
        if not self._paused and func.namespace not in ("prim", "profiler"):
            self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def launches(self) -> Iterator[None]:
        """Count the launches of :mod:`spiking.backends.triton_kernels` inside the block."""
        original = triton_kernels.launch

        def counted(*args, **kwargs):
            self.triton += 1
            self._paused = True
            try:
                return original(*args, **kwargs)
            finally:
                self._paused = False

        triton_kernels.launch = counted
        try:
            yield
        finally:
            triton_kernels.launch = original

    @property
    def total(self) -> int:
        return sum(self.ops.values()) + self.triton


def cuda_backend(name: str) -> str:
    """The backend that ``name`` (``auto`` or one of :data:`spiking.backends.NAMES`) takes for
    CUDA tensors."""
    with backends.use_backend(name):
        return backends.preferred(CUDA)


def count_training_step(arch: str, time_steps: int, batch: int, width: float,
                        backend_name: str, seed: int = 0) -> OperationCounter:
    """The counts of one training step of ``arch`` as CUDA runs it with backend ``backend_name``
    (``auto`` included), on CPU tensors, all T in one chunk, after a warm-up step."""
    torch.manual_seed(seed)
    model = models.get_model(arch, width=width)
    model.time_chunk = time_steps
    encoder = PoissonEncoder(time_steps, 0.5 if arch == "lenet" else 1.0)
    images = torch.rand(batch, *model.input_shape)
    target = F.one_hot(torch.arange(batch) % model.num_classes, model.num_classes).float()
    # foreach: SGD's default for CUDA parameters (not for CPU ones), a few launches for all
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, weight_decay=5e-4, foreach=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.mse_loss(model(encoder(images)), target, reduction="sum").backward()
        optimizer.step()

    counter = OperationCounter()
    with backends.use_backend(cuda_backend(backend_name)), counter.launches():
        step()
        with counter:
            step()
    return counter


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet11", choices=sorted(models.MODELS))
    parser.add_argument("-T", "--time-steps", type=int, nargs="+", default=[25, 50, 100])
    parser.add_argument("-b", "--batch", type=int, default=2)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--backends", type=lambda s: s.split(","), default=["auto", "triton"])
    args = parser.parse_args(argv)
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are first imported
    unknown = [name for name in args.backends if name not in ("auto", *backends.NAMES)]
    if unknown or any(t < 1 for t in args.time_steps) or args.batch < 1 or args.width <= 0:
        print(f"error: backends must be among auto, {', '.join(backends.NAMES)}, T, batch and "
              "width positive", file=sys.stderr)
        return 2
    reason = backends.unavailable("triton", torch.device("cpu"))
    if "triton" in map(cuda_backend, args.backends) and reason is not None:
        print(f"error: the triton backend cannot run: {reason}; --backends auto counts without "
              "it", file=sys.stderr)
        return 2
    print(f"{args.arch} width {args.width}, batch {args.batch}, one chunk of all T, "
          "one training step as on CUDA")
    print(f"| backend | T | ATen ops | Triton launches | total | per step of T | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.backends:
        for time_steps in args.time_steps:
            start = time.perf_counter()
            counter = count_training_step(args.arch, time_steps, args.batch, args.width, name)
            seconds = time.perf_counter() - start
            label = name if name == cuda_backend(name) else f"{name} ({cuda_backend(name)})"
            print(f"| {label} | {time_steps} | {sum(counter.ops.values())} | {counter.triton} | "
                  f"{counter.total} | {counter.total / time_steps:.1f} | {seconds:.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
