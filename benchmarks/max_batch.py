"""The largest batch whose training step fits in the device's memory.

Each try runs one warm-up and one measured training step (encode, forward with all T in one
chunk, MSE-sum loss, backward, SGD step) in a fresh process, so no cached allocation from an
earlier try helps or hurts; out of memory ends the try. The batch doubles from ``--start`` until a
try fails (or reaches ``--limit``), then bisects between the last fit and the first failure
until they are within ``--start / 4`` of each other or ``--budget`` seconds are spent.

    python benchmarks/max_batch.py --arch resnet11 -T 100 --device cuda

prints one line per try and a last line ``largest batch that fits: B (peak X GiB of Y GiB)``.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence

OUT_OF_MEMORY = 3  # exit status of a try that ran out of memory


def try_batch(arch: str, time_steps: int, batch: int, width: float, device: str) -> int:
    """Run the two steps in this process; print the peak memory; the exit status."""
    import torch
    import torch.nn.functional as F

    import models
    from spiking import PoissonEncoder

    torch.manual_seed(0)
    model = models.get_model(arch, width=width).to(device)
    model.time_chunk = time_steps
    encoder = PoissonEncoder(time_steps, 0.5 if arch == "lenet" else 1.0)
    images = torch.randn(batch, *model.input_shape, device=device)
    target = F.one_hot(torch.arange(batch, device=device) % model.num_classes,
                       model.num_classes).float()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, weight_decay=5e-4)
    try:
        for _ in range(2):
            optimizer.zero_grad(set_to_none=True)
            F.mse_loss(model(encoder(images)), target, reduction="sum").backward()
            optimizer.step()
    except torch.OutOfMemoryError:
        print(f"batch {batch}: out of memory")
        return OUT_OF_MEMORY
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        print(f"batch {batch}: fits, peak {peak:.1f} GiB of {total:.1f} GiB")
    else:
        print(f"batch {batch}: fits")
    return 0


def search(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.budget

    def fits(batch: int) -> bool | None:
        """True or False, or None when the budget or a try's time ran out."""
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        command = [sys.executable, __file__, "--arch", args.arch, "-T", str(args.time_steps),
                   "--width", str(args.width), "--device", args.device, "--try", str(batch)]
        try:
            done = subprocess.run(command, capture_output=True, text=True,
                                  timeout=min(left, args.try_timeout))
        except subprocess.TimeoutExpired:
            print(f"batch {batch}: no answer within {min(left, args.try_timeout):.0f} s",
                  flush=True)
            return None
        lines = (done.stdout.strip() or done.stderr.strip() or "no output").splitlines()
        print(lines[-1], flush=True)
        if done.returncode not in (0, OUT_OF_MEMORY):
            print(done.stderr[-2000:], file=sys.stderr)
            return None
        if done.returncode == 0:
            found.setdefault("peak", {})[batch] = lines[-1]
        return done.returncode == 0

    found: dict = {}
    good, bad, batch = 0, None, args.start
    while batch <= args.limit:
        answer = fits(batch)
        if answer is None:
            break
        if not answer:
            bad = batch
            break
        good, batch = batch, batch * 2
    while bad is not None and bad - good > max(1, args.start // 4):
        middle = (good + bad) // 2
        answer = fits(middle)
        if answer is None:
            break
        good, bad = (middle, bad) if answer else (good, middle)
    if good == 0:
        print("error: not even the first batch fits (or no try finished)", file=sys.stderr)
        return 1
    bound = ("the --limit" if bad is None and batch > args.limit else
             f"{bad} does not" if bad is not None else "the time budget ran out")
    print(f"largest batch that fits: {good} ({found['peak'][good].split(': ', 1)[1]}; "
          f"upper end: {bound})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet11")
    parser.add_argument("-T", "--time-steps", type=int, default=100)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--start", type=int, default=16, help="first batch tried (default 16)")
    parser.add_argument("--limit", type=int, default=1024, help="largest batch tried")
    parser.add_argument("--budget", type=float, default=140, help="seconds for the whole search")
    parser.add_argument("--try-timeout", type=float, default=60, help="seconds for one try")
    parser.add_argument("--try", dest="batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.time_steps, args.start, args.limit) < 1 or args.width <= 0:
        parser.error("T, --start and --limit must be positive, --width above 0")
    if args.batch is not None:
        return try_batch(args.arch, args.time_steps, args.batch, args.width, args.device)
    return search(args)


if __name__ == "__main__":
    sys.exit(main())
