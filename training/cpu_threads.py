"""How PyTorch's CPU threads wait for work: the one place this project sets it.

PyTorch runs CPU operations (and this project's C kernels) on an OpenMP thread pool. Between two
parallel regions GNU OpenMP (libgomp, which PyTorch's Linux wheels ship) keeps its idle threads
spinning for about 300 000 iterations, a few milliseconds, before they sleep. On idle cores that
spinning saves a wake-up; on cores shared with another busy process it takes the time that the
threads being waited for need, and a run slows down several times over beside one other
PyTorch process. Sleeping at once (``OMP_WAIT_POLICY=PASSIVE``) costs a wake-up per parallel
region: on an idle machine a LeNet training step at T = 100 took a quarter longer. So the
project sets a short spin, ``GOMP_SPINCOUNT=10000``, then sleep: on the idle machine as fast as
OpenMP's default, and beside a busy neighbour about half its slowdown (docs/usage.md, *CPU
threads*, has the measurements and the commands; ``benchmarks/shared_cpu.py`` measures a command
alone and beside such a neighbour). Other OpenMP runtimes, which do not read ``GOMP_SPINCOUNT``,
take ``OMP_WAIT_POLICY=PASSIVE``.

OpenMP reads these variables once, when PyTorch loads it, so :func:`apply_thread_policy` must run
before ``import torch``: ``import training`` calls it first, and the entry scripts import
``training`` before anything else. The user's own settings win: if any of
:data:`WAIT_VARIABLES` is set, nothing is set, and ``GOMP_SPINCOUNT=300000`` (libgomp's value
when no policy is set) gives back OpenMP's own behaviour. Thread counts are left alone
(``OMP_NUM_THREADS`` and ``torch.set_num_threads`` set them as usual).
"""
from __future__ import annotations

import os
import sys

# What this project sets when the user has set none of WAIT_VARIABLES.
# libgomp reads GOMP_SPINCOUNT before OMP_WAIT_POLICY; other runtimes only the latter.
POLICY = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}
# How long idle OpenMP threads spin: the standard variable, libgomp's and LLVM/Intel OpenMP's.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")

_outcome = "not applied"  # what apply_thread_policy found, for describe()


def apply_thread_policy() -> None:
    """Set :data:`POLICY` in ``os.environ`` unless the user set a wait variable, or torch is
    loaded already (too late to matter in this process; the run's first line says so)."""
    global _outcome
    chosen = {name: os.environ[name] for name in WAIT_VARIABLES if name in os.environ}
    if chosen:
        _outcome = ", ".join(f"{name}={value}" for name, value in chosen.items()) + " (yours)"
    elif "torch" in sys.modules:
        _outcome = "OpenMP's default wait (torch was imported before training)"
    else:
        os.environ.update(POLICY)
        _outcome = ", ".join(f"{name}={value}" for name, value in POLICY.items())


def describe() -> str:
    """The wait policy in force, e.g. ``OMP_WAIT_POLICY=PASSIVE, GOMP_SPINCOUNT=10000`` or
    ``GOMP_SPINCOUNT=300000 (yours)``."""
    return _outcome
