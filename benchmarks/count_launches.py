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
``graphs`` counts each replay of a captured loop as one launch: a graph cannot be captured
without a GPU, so :func:`replayed_eagerly` stands in for the capture, uncounted.

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
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import models
from spiking import PoissonEncoder, backends
from spiking.backends import cuda_graphs, triton_kernels

__all__ = ["CUDA", "OperationCounter", "count_training_step", "cuda_backend"]

CUDA = torch.device("cuda")


class OperationCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched while active (``ops``), and with :meth:`launches`
    the Triton kernels launched (``triton``) and the CUDA graphs replayed (``graphs``), not
    counting what Triton's interpreter or the graphs' stand-in runs to emulate one."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.triton = 0
        self.graphs = 0
        self._paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # prim: queries of a tensor (its device), dispatched only for tensor subclasses;
        # profiler: the optimizer's record_function marks; neither launches anything
        if not self._paused and func.namespace not in ("prim", "profiler"):
            self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def _paused_for(self) -> Iterator[None]:
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    @contextlib.contextmanager
    def launches(self) -> Iterator[None]:
        """Count the launches of :mod:`spiking.backends.triton_kernels` and the replays of
        :mod:`spiking.backends.cuda_graphs` (captured on the CPU by :func:`replayed_eagerly`)
        inside the block."""
        original = triton_kernels.launch

        def counted(*args, **kwargs):
            self.triton += 1
            with self._paused_for():
                return original(*args, **kwargs)

        def captured(function, inputs):
            replay, outputs = replayed_eagerly(function, inputs)

            def counted_replay() -> None:
                self.graphs += 1
                with self._paused_for():
                    replay()

            return counted_replay, outputs

        # graphs "captured" here count into this counter: none may outlive the block
        triton_kernels.launch, cuda_graphs.CAPTURES["cpu"] = counted, captured
        cuda_graphs.forget_graphs()
        backends.unavailable.cache_clear()
        try:
            yield
        finally:
            triton_kernels.launch = original
            del cuda_graphs.CAPTURES["cpu"]
            cuda_graphs.forget_graphs()
            backends.unavailable.cache_clear()

    @property
    def total(self) -> int:
        return sum(self.ops.values()) + self.triton + self.graphs


def replayed_eagerly(function: Callable[..., tuple[torch.Tensor, ...]],
                     inputs: tuple[torch.Tensor, ...]
                     ) -> tuple[Callable[[], None], tuple[torch.Tensor, ...]]:
    """A stand-in for :func:`spiking.backends.cuda_graphs.capture_cuda_graph` on CPU tensors:
    each replay runs ``function`` again on the same fixed buffers and leaves the results in
    the outputs of the first run, as a replayed graph does."""
    outputs = function(*inputs)

    def replay() -> None:
        for held, fresh in zip(outputs, function(*inputs)):
            held.copy_(fresh)

    return replay, outputs


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
    print("| backend | T | ATen ops | Triton launches | graph replays | total | per step of T "
          "| seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.backends:
        for time_steps in args.time_steps:
            start = time.perf_counter()
            counter = count_training_step(args.arch, time_steps, args.batch, args.width, name)
            seconds = time.perf_counter() - start
            label = name if name == cuda_backend(name) else f"{name} ({cuda_backend(name)})"
            print(f"| {label} | {time_steps} | {sum(counter.ops.values())} | {counter.triton} | "
                  f"{counter.graphs} | {counter.total} | {counter.total / time_steps:.1f} | "
                  f"{seconds:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
