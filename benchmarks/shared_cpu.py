"""A command's wall time alone and beside a busy PyTorch neighbour: what sharing the cores costs.

The neighbour is a second process running PyTorch matrix products on ``--load-threads`` threads
(default 2) with PyTorch's default OpenMP settings, as another user's job would. Runs alternate,
alone then loaded, ``--repeats`` times (default 3), a fresh neighbour for each loaded run, started
and warm before the command starts and killed when it ends; the neighbour also stops by itself
after ``--load-seconds``. Prints every run's time, the medians and their ratio (loaded / alone).

    python benchmarks/shared_cpu.py [--env NAME=VALUE ...] -- COMMAND [ARGS ...]

``--env`` sets variables for the command only (e.g. ``--env OMP_WAIT_POLICY=PASSIVE``), so one
command line measures one candidate wait policy; ``training.cpu_threads`` leaves a variable the
command's environment sets alone. docs/usage.md, *CPU threads*, gives the commands that decide
the project's default. The numbers mean little on a machine that is busy already: the script
prints the load average it started with. Exit status 2 after one ``error:`` line when an
argument is wrong or the command fails.
"""
from __future__ import annotations

import argparse
import os
import select
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

# The neighbour: PyTorch's defaults (no wait policy), a matrix product loop until killed or out
# of time. It says "ready" after its first product, when its threads are up.
LOAD = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
deadline = time.monotonic() + float(sys.argv[2])
a = torch.randn(512, 512)
a @ a
print("ready", flush=True)
while time.monotonic() < deadline:
    a @ a
"""
# what a default PyTorch process does not have, whatever the measured command is given
_NOT_IN_THE_NEIGHBOUR = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS")


def _assignment(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [options] -- COMMAND [ARGS ...]")
    parser.add_argument("--repeats", type=int, default=3, help="runs alone and loaded (default 3)")
    parser.add_argument("--load-threads", type=int, default=2,
                        help="the neighbour's PyTorch threads (default 2)")
    parser.add_argument("--load-seconds", type=float, default=900.0,
                        help="the neighbour stops by itself after this long (default 900)")
    parser.add_argument("--env", type=_assignment, action="append", default=[],
                        metavar="NAME=VALUE", help="set for the command only; repeatable")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to time")
    args = parser.parse_args(argv)
    args.command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not args.command:
        parser.error("no command given: put it after --")
    if args.repeats < 1 or args.load_threads < 1 or args.load_seconds <= 0:
        parser.error("--repeats and --load-threads must be at least 1, --load-seconds positive")
    return args


def _start_neighbour(threads: int, seconds: float) -> subprocess.Popen:
    """The neighbour, once its threads are working; an error if it is not up within a minute."""
    env = {k: v for k, v in os.environ.items() if k not in _NOT_IN_THE_NEIGHBOUR}
    load = subprocess.Popen([sys.executable, "-c", LOAD, str(threads), str(seconds)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ready, _, _ = select.select([load.stdout], [], [], 60)
    if not ready or load.stdout.readline().strip() != "ready":
        load.kill()
        load.wait()
        raise RuntimeError("the PyTorch neighbour did not start (is torch installed?)")
    return load


def _time(command: Sequence[str], env: dict[str, str]) -> float:
    """Seconds ``command`` takes; a failure is an error naming its last line of output."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the command failed with status {done.returncode}: {last}")
    return seconds


def _loaded(command: Sequence[str], env: dict[str, str], args: argparse.Namespace) -> float:
    neighbour = _start_neighbour(args.load_threads, args.load_seconds)
    try:
        seconds = _time(command, env)
        if neighbour.poll() is not None:
            raise RuntimeError("the neighbour stopped before the command did: raise "
                               "--load-seconds")
        return seconds
    finally:
        neighbour.kill()
        neighbour.wait()


def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    """Alone and loaded, alternately, ``args.repeats`` times each; prints each run."""
    env = {**os.environ, **dict(args.env)}
    times: dict[str, list[float]] = {"alone": [], "loaded": []}
    for repeat in range(1, args.repeats + 1):
        for kind in times:
            seconds = (_time(args.command, env) if kind == "alone"
                       else _loaded(args.command, env, args))
            times[kind].append(seconds)
            print(f"run {repeat} {kind:6s} {seconds:8.2f} s", flush=True)
    return times


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = " ".join(f"{name}={value}" for name, value in args.env) or "(environment as is)"
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    print(f"command: {shlex.join(args.command)}\nits variables: {settings}\nneighbour: "
          f"PyTorch, {args.load_threads} threads; {cpus} CPUs; load average at start "
          f"{load:.2f}", flush=True)
    if load > cpus:
        print(f"warning: the machine is busy already (load {load:.1f} on {cpus} CPUs): these "
              f"times are not reliable", flush=True)
    try:
        times = measure(args)
    except (RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    alone, loaded = (statistics.median(times[kind]) for kind in ("alone", "loaded"))
    print(f"median alone {alone:.2f} s, loaded {loaded:.2f} s, loaded / alone "
          f"{loaded / alone:.2f}")


if __name__ == "__main__":
    main()
