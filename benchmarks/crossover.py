"""Where the event-driven synapses stop paying: event-driven against dense, per layer and density.

For every distinct synapse layer of the networks (full width), one chunk of ``--images`` input
images (the networks' CPU chunk: T' * B) of random spikes at each density: the time of the
forward plus the backward (weight gradient, and the input gradient for a layer fed by neurons)
through :mod:`spiking.backends.event_kernels` (event extraction included) and through the dense PyTorch
ops the ``torch``-style path runs (``F.conv2d`` / ``F.linear`` and their backward). Prints the
ratio event / dense per layer and density and the density where each layer's ratio crosses 1;
``spiking.backends.cpu.EVENT_DENSITY_MAX`` is set from this table (benchmarks/README.md).

    python benchmarks/crossover.py --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from spiking.backends import event_kernels

# (name, C_in, C_out, k, stride, padding, H, input_gradient) of the distinct layers; H = 0: linear
LAYERS: tuple[tuple[str, int, int, int, int, int, int, bool], ...] = (
    ("lenet cnn1 5x5 1->20 28x28", 1, 20, 5, 1, 2, 28, False),
    ("lenet cnn2 5x5 20->50 14x14", 20, 50, 5, 1, 2, 14, True),
    ("lenet fc0 2450->200", 2450, 200, 1, 1, 0, 0, True),
    ("vgg9 cnn12 3x3 64->64 32x32", 64, 64, 3, 1, 1, 32, True),
    ("vgg9 cnn22 3x3 128->128 16x16", 128, 128, 3, 1, 1, 16, True),
    ("vgg9 cnn32 3x3 256->256 8x8", 256, 256, 3, 1, 1, 8, True),
    ("vgg9 fc0 4096->1024", 4096, 1024, 1, 1, 0, 0, True),
    ("resnet11 cnn32 3x3 s2 256->256 16x16", 256, 256, 3, 2, 1, 16, True),
    ("resnet11 shortcut2 1x1 s2 128->256 16x16", 128, 256, 1, 2, 0, 16, True),
)
DENSITIES = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)


def _best_time(step: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` runs after one warm-up: on a shared machine the least
    disturbed run is the best estimate of the cost."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def layer_times(layer: tuple, density: float, images: int, repeats: int,
                generator: torch.Generator) -> tuple[float, float]:
    """``(event-driven seconds, dense seconds)`` of one forward and backward of ``layer``."""
    _, cin, cout, k, stride, padding, height, input_gradient = layer
    shape = (images, cin, height, height) if height else (images, cin)
    spikes = (torch.rand(shape, generator=generator) < density).float()
    weight = torch.randn((cout, cin, k, k) if height else (cout, cin), generator=generator)
    weight_cl = (weight.permute(1, 2, 3, 0) if height else weight.t()[:, None, None]).contiguous()
    if height:
        out = F.conv2d(spikes, weight, None, stride, padding)
    else:
        out = F.linear(spikes, weight)
    grad = torch.randn(out.shape, generator=generator)

    def event_step() -> None:
        events = event_kernels.find_events(spikes)
        event_kernels.conv_forward(events, weight_cl, stride, padding)
        event_kernels.conv_backward(events, weight_cl, grad, stride, padding,
                                    input_grad=input_gradient)

    def dense_step() -> None:
        if height:
            F.conv2d(spikes, weight, None, stride, padding)
            torch.ops.aten.convolution_backward(
                grad, spikes, weight, None, (stride, stride), (padding, padding), (1, 1), False,
                (0, 0), 1, (input_gradient, True, False))
        else:
            F.linear(spikes, weight)
            grad.t() @ spikes
            if input_gradient:
                grad @ weight

    return _best_time(event_step, repeats), _best_time(dense_step, repeats)


def crossing(densities: Sequence[float], ratios: Sequence[float]) -> str:
    """The density where event / dense reaches 1, interpolated linearly in the table."""
    points = list(zip(densities, ratios))
    if ratios[0] >= 1:
        return f"< {densities[0]}"
    for (d0, r0), (d1, r1) in zip(points, points[1:]):
        if r1 >= 1:
            return f"{d0 + (1 - r0) * (d1 - d0) / (r1 - r0):.3f}"
    return f"> {densities[-1]}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=128,
                        help="images per chunk, T' * B (default 128: LeNet's CPU chunk)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--densities", type=lambda s: [float(d) for d in s.split(",")],
                        default=list(DENSITIES))
    parser.add_argument("--layers", default="", help="only layers whose name contains this")
    args = parser.parse_args(argv)
    if not event_kernels.available():
        sys.exit("error: the event kernels cannot be built (no C compiler?)")
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    print(f"event-driven / dense time of forward + backward, {args.images} images, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'layer':42s}" + "".join(f"{d:>7.2f}" for d in args.densities) + "   crossover")
    crossovers = []
    for layer in LAYERS:
        if args.layers not in layer[0]:
            continue
        ratios = []
        for density in args.densities:
            event, dense = layer_times(layer, density, args.images, args.repeats, generator)
            ratios.append(event / dense)
        crossovers.append(crossing(args.densities, ratios))
        print(f"{layer[0]:42s}" + "".join(f"{r:7.2f}" for r in ratios)
              + f"   {crossovers[-1]:>9s}", flush=True)
    numeric = [float(c) for c in crossovers if c[0].isdigit()]
    if numeric:
        print(f"median crossover of the layers with one: {statistics.median(numeric):.3f}")


if __name__ == "__main__":
    main()
