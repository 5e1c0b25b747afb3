"""How a training step's cost grows with spike density, event-driven against dense.

Builds the project's network as benchmarks/bench.py does (real MNIST digits with ``--data``,
a checkpoint's weights with ``--resume``), then for each threshold scale (every neuron's
threshold times it: lower, denser spikes) measures the input density of every synapse layer
and times the training step with the event-driven synapses
(``spiking.backends.cpu.EVENT_DENSITY_MAX`` as set) and with the dense ones (0), alternating the two in one process so that a loaded machine
slows both alike. Prints one row per scale: the densities, the fraction of chunks that ran
event-driven, both medians and their ratio.

    python benchmarks/density_sweep.py --data DIR --resume CHECKPOINT -T 100 -b 32 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from benchmarks import bench
from spiking.backends import cpu as cpu_backend
from training import UsageError


def sweep_row(args: argparse.Namespace, scale: float) -> dict:
    """Densities and train-step medians (event-driven, dense) at one threshold scale."""
    settings = bench.BenchSettings(arch=args.arch, time_steps=args.time_steps, batch=args.batch,
                                   width=args.width, variants=("project",), seed=args.seed,
                                   data=args.data, resume=args.resume, threshold_scale=scale)
    variant = bench.build_variants(settings)["project"]
    event_max = cpu_backend.EVENT_DENSITY_MAX
    densities = bench.input_densities(variant)
    times: dict[str, list[float]] = {"event": [], "dense": []}
    try:
        for round_index in range(args.warmup + args.repeats):
            for path, setting in (("event", event_max), ("dense", 0.0)):
                cpu_backend.EVENT_DENSITY_MAX = setting
                start = time.perf_counter()
                variant.train_step()
                if round_index >= args.warmup:
                    times[path].append(time.perf_counter() - start)
    finally:
        cpu_backend.EVENT_DENSITY_MAX = event_max
    chunks = sum(row["event_chunks"] + row["dense_chunks"] for row in densities.values())
    return {"scale": scale, "densities": {k: row["density"] for k, row in densities.items()},
            "event_fraction": sum(row["event_chunks"] for row in densities.values()) / chunks,
            "event": statistics.median(times["event"]),
            "dense": statistics.median(times["dense"])}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="lenet")
    parser.add_argument("-T", "--time-steps", type=int, default=100)
    parser.add_argument("-b", "--batch", type=int, default=32)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--data", type=Path, default=None, help="MNIST under this folder")
    parser.add_argument("--resume", default=None, help="checkpoint whose weights to use")
    parser.add_argument("--scales", type=lambda s: [float(v) for v in s.split(",")],
                        default=[1.0, 0.7, 0.5, 0.35, 0.25], help="threshold scales")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeats < 1 or args.warmup < 0 or any(s <= 0 for s in args.scales):
        parser.error("--repeats must be at least 1, --warmup at least 0, scales positive")
    print(f"train step, {args.arch} T {args.time_steps} B {args.batch}, images "
          f"{args.data or 'synthetic'}, weights {args.resume or 'initialisation'}, "
          f"{torch.get_num_threads()} threads, event density max "
          f"{cpu_backend.EVENT_DENSITY_MAX}, "
          f"medians of {args.repeats}")
    header = None
    for scale in args.scales:
        try:
            row = sweep_row(args, scale)
        except UsageError as error:
            sys.exit(f"error: {error}")
        if header is None:
            header = f"{'scale':>6s} " + "".join(f"{name:>9s}" for name in row["densities"])
            print(header + "  event chunks  event ms  dense ms  event/dense")
        print(f"{scale:6.2f} " + "".join(f"{d:9.4f}" for d in row["densities"].values())
              + f"  {row['event_fraction']:12.2f}  {row['event'] * 1e3:8.0f}  "
                f"{row['dense'] * 1e3:8.0f}  {row['event'] / row['dense']:11.2f}", flush=True)


if __name__ == "__main__":
    main()
