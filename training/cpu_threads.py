"""How PyTorch's CPU threads wait for work: the one place this project sets it.

PyTorch runs CPU operations (and this project's C kernels) on an OpenMP thread pool. Between two
parallel regions GNU OpenMP (libgomp, which PyTorch's Linux wheels ship) keeps its idle threads
spinning for about 300 000 iterations, a few milliseconds, before they sleep. On idle cores that
spinning saves a wake-up; on cores shared with another busy process it takes the time that the
threads being waited for need, and a run slows down several times over beside one other
PyTorch process. ``OMP_WAIT_POLICY=PASSIVE`` puts idle threads to sleep at once: each parallel
region then pays for waking them, most on small tensors (many short regions), in exchange for
not fighting a neighbour for its cores. ``benchmarks/shared_cpu.py`` measures a command alone
and beside such a neighbour (docs/usage.md, *CPU threads*, has the commands that decide this
policy).

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
POLICY = {"OMP_WAIT_POLICY": "PASSIVE"}
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
    """The wait policy in force, e.g. ``OMP_WAIT_POLICY=PASSIVE`` or ``GOMP_SPINCOUNT=300000
    (yours)``."""
    return _outcome
