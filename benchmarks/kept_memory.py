"""What a training step keeps for its backward, per image and time step, counted, not measured.

The forward runs on fake tensors (shapes, no values: no compute, any width and T on any machine)
with the ``torch`` backend, the one ``auto`` takes on CUDA. Every tensor an autograd node saves
(``saved_tensors_hooks``) and every tensor a custom Function keeps on its ``ctx`` counts once per
storage; the weights do not (they are not per image). The batch that fits is the device memory
over the bytes kept per image (kept per image and step times T): the currents of the layer
running and the gradients come on top, so the real largest batch is somewhat lower.

    python benchmarks/kept_memory.py --arch resnet11 -T 100

prints ``resnet11, T = 100: kept for the backward 649,790 B per image and step; batch that fits
in 80 GB by this count: 1231``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode

DEVICE_BYTES = 80 * 10**9  # an 80 GB GPU


def _tensors(value: object) -> Iterator[Tensor]:
    """The tensors in a ``ctx`` attribute: itself, or inside containers and small records."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif hasattr(value, "__dict__") and not isinstance(value, (nn.Module, type(sys))):
        for item in vars(value).values():
            yield from _tensors(item)


def _nodes(output: Tensor) -> Iterator[object]:
    """Every node of the autograd graph behind ``output``."""
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(following for following, _ in node.next_functions)


def kept_bytes(model: nn.Module, spikes: Tensor) -> int:
    """Bytes of the distinct storages that the backward of ``model(spikes)`` keeps, weights
    excluded. Call under the mode that made ``spikes`` (fake or real)."""
    storages: dict[int, int] = {}

    def keep(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        storages[storage._cdata] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        output = model(spikes)
    for node in _nodes(output):
        for tensor in _tensors(getattr(node, "__dict__", {})):
            keep(tensor)
    for parameter in model.parameters():
        storages.pop(parameter.untyped_storage()._cdata, None)
    return sum(storages.values())


def kept_per_image_step(arch: str, time_steps: int, width: float = 1.0, batch: int = 2) -> float:
    """Bytes kept per image and step by a training step of ``models.get_model(arch)``."""
    import models
    from spiking import PoissonEncoder, backends

    torch.manual_seed(0)
    model = models.get_model(arch, width=width)
    with backends.use_backend("torch"), FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to("cpu")
        model.time_chunk = time_steps
        images = torch.randn(batch, *model.input_shape)
        spikes = PoissonEncoder(time_steps, 0.5 if arch == "lenet" else 1.0)(images)
        return kept_bytes(model, spikes) / (batch * time_steps)


def batch_that_fits(per_image_step: float, time_steps: int,
                    device_bytes: int = DEVICE_BYTES) -> int:
    """The largest batch whose kept tensors fit in ``device_bytes``."""
    return int(device_bytes // (per_image_step * time_steps))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet11")
    parser.add_argument("-T", "--time-steps", type=int, default=100)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--device-bytes", type=float, default=DEVICE_BYTES,
                        help="memory the batch must fit in (default 80e9)")
    parser.add_argument("--batch-only", action="store_true",
                        help="print only the batch that fits (for scripts)")
    args = parser.parse_args(argv)
    if args.time_steps < 1 or args.width <= 0 or args.device_bytes <= 0:
        parser.error("T, --width and --device-bytes must be positive")
    per_step = kept_per_image_step(args.arch, args.time_steps, args.width)
    batch = batch_that_fits(per_step, args.time_steps, int(args.device_bytes))
    if args.batch_only:
        print(batch)
        return 0
    print(f"{args.arch}, T = {args.time_steps}: kept for the backward {per_step:,.0f} B per image "
          f"and step; batch that fits in {args.device_bytes / 1e9:g} GB by this count: {batch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
