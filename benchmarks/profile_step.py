"""Where a step's time goes: the project's training and evaluation steps of ``bench.py``, with
every call into the C kernels of the ``cpu`` backend (:mod:`spiking.backends.cpu_kernels`,
:mod:`spiking.backends.event_kernels`) timed.

Prints, per step, its mean time over ``--repeats`` steps (after two warm-up steps) and each
kernel's share; what the kernels do not cover is PyTorch's own work (encoding, dense layers,
loss, optimizer, autograd, Python). Kernel calls are timed with ``time.perf_counter`` around
them, so run it on an otherwise idle machine.

    python benchmarks/profile_step.py --arch lenet -T 100 -b 32 --data DIR --resume CHECKPOINT
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

import models
from benchmarks.bench import NEURON_VARIANT, BenchSettings, build_variants
from spiking.backends import cpu, cpu_kernels, event_kernels

# cpu._launch runs every scan generated from a neuron's methods
KERNELS = {cpu: ("_launch",),
           cpu_kernels: ("avg_pool", "avg_pool_backward", "pack_spikes", "poisson_spikes"),
           event_kernels: ("find_events", "conv_forward", "conv_backward")}


@contextlib.contextmanager
def timed_kernels(seconds: dict[str, float], calls: collections.Counter) -> Iterator[None]:
    """Inside: every function of :data:`KERNELS` adds its time to ``seconds`` and counts its
    calls in ``calls``; the originals are back on exit."""
    originals = {(module, name): getattr(module, name)
                 for module, names in KERNELS.items() for name in names}
    for (module, name), run in originals.items():
        label = f"{module.__name__.rsplit('.', 1)[-1]}.{name}"

        def timed(*args, _run: Callable = run, _label: str = label, **kwargs):
            start = time.perf_counter()
            try:
                return _run(*args, **kwargs)
            finally:
                seconds[_label] += time.perf_counter() - start
                calls[_label] += 1

        setattr(module, name, timed)
    try:
        yield
    finally:
        for (module, name), run in originals.items():
            setattr(module, name, run)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="lenet", choices=sorted(models.MODELS))
    parser.add_argument("-T", "--time-steps", type=int, default=100)
    parser.add_argument("-b", "--batch", type=int, default=32)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=None,
                        help="real MNIST digits from this folder (lenet only)")
    parser.add_argument("--resume", default=None, help="weights of this checkpoint")
    parser.add_argument("--neuron", default=None,
                        help="another neuron class, as bench.py's --neuron (default: the paper's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seconds: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()
    name = "project" if args.neuron is None else NEURON_VARIANT + args.neuron
    settings = BenchSettings(arch=args.arch, time_steps=args.time_steps, batch=args.batch,
                             width=args.width, variants=("project", name), data=args.data,
                             resume=args.resume)
    project = build_variants(settings)[name]
    with timed_kernels(seconds, calls):
        for step_name, step in (("train", project.train_step), ("eval", project.eval_step)):
            step(), step()
            seconds.clear(), calls.clear()
            start = time.perf_counter()
            for _ in range(args.repeats):
                step()
            total = (time.perf_counter() - start) / args.repeats
            print(f"{args.arch} T={args.time_steps} B={args.batch} {step_name} step: "
                  f"{1000 * total:.0f} ms")
            for label, spent in sorted(seconds.items(), key=lambda item: -item[1]):
                share = spent / args.repeats
                print(f"  {label:28s} {1000 * share:8.1f} ms  {100 * share / total:5.1f} %  "
                      f"({calls[label] // args.repeats} calls)")


if __name__ == "__main__":
    main()
