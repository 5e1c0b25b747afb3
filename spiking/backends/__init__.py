"""The one place that chooses which kernels run the spiking layers.

A backend is a module that offers the same named kernels, typed by the protocol
:class:`~.contract.KernelTable` (its names: :data:`KERNELS`): the neuron scans forward and
backward, the pooling neuron, the output integrator, the synapses' forward and backward, the
Poisson encoding; a module that lacks one is refused when the tables are built. :mod:`spiking.functional` and :mod:`spiking.synapses` ask
:func:`select` for a table once per call, for the tensors they are given, and call it.

| name        | module                  | what runs                                            | tensors |
|-------------|-------------------------|------------------------------------------------------|---------|
| ``reference`` | :mod:`.reference`     | every neuron's own methods, one autograd node per time step; synapses step by step | any device |
| ``torch``   | :mod:`.pytorch`         | every neuron's own methods over a chunk of steps; time-folded synapses that keep packed spikes for the backward | any device |
| ``cpu``     | :mod:`.cpu`             | fused C kernels for the paper's neurons, event-driven synapses, Poisson encoding | CPU, float32/64 |
| ``triton``  | :mod:`.triton_kernels`  | fused Triton kernels for the paper's neurons, the time loop inside | CUDA (CPU under ``TRITON_INTERPRET=1``), float32/64 |
| ``graphs``  | :mod:`.cuda_graphs`     | ``torch``'s neuron loops captured once as CUDA graphs, one replay per chunk; no Triton | CUDA |

Every backend computes the same numbers (tests/test_parity.py holds each to the reference, and
the reference to the authors' loop); they differ in speed, memory and where they run. The fast
backends run scans generated from each neuron's own methods (:mod:`.codegen`); a neuron whose
methods cannot be fused runs on ``torch``.

``auto``, the default, takes ``cpu`` for CPU tensors and ``torch`` elsewhere: the Triton kernels
are tested in Triton's interpreter but have not yet run on a GPU, so ``triton`` runs only when
asked for by name (``benchmarks/cuda_check.sh`` is the check that decides whether ``auto`` may
take it on CUDA); so does ``graphs``, whose capture has not yet run on a GPU either. Choose
with the environment variable ``SPIKING_BACKEND=<name>``, :func:`set_backend` or
:func:`use_backend`. Where the chosen backend cannot run an operation (no
C compiler, a CUDA tensor for ``cpu``, a dtype, a neuron method that cannot be fused), ``torch`` runs
it, and the log says so in one line, once: never silently.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from . import cpu, cuda_graphs, pytorch, reference, triton_kernels
from .contract import KERNELS, KernelTable, check_table

__all__ = ["KERNELS", "KernelTable", "NAMES", "describe", "preferred", "requested_backend",
           "select", "set_backend", "table", "unavailable", "use_backend"]

TABLES: dict[str, KernelTable] = {module.NAME: check_table(module)
                                  for module in (reference, pytorch, cpu, triton_kernels,
                                                 cuda_graphs)}
NAMES = tuple(TABLES)

_log = logging.getLogger("spiking")
_told: set[tuple[str, str]] = set()  # (backend, reason) pairs already reported


def _checked(name: str) -> str:
    if name != "auto" and name not in TABLES:
        raise ValueError(f"unknown spiking backend {name!r}; choose auto or one of "
                         f"{', '.join(NAMES)}")
    return name


_requested = _checked(os.environ.get("SPIKING_BACKEND", "auto").strip().lower() or "auto")


def requested_backend() -> str:
    """The backend asked for: ``auto`` or one of :data:`NAMES`."""
    return _requested


def set_backend(name: str) -> None:
    """Run the spiking layers with ``name`` (``auto`` or one of :data:`NAMES`) from now on."""
    global _requested
    _requested = _checked(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """``with use_backend("torch"): ...`` runs the block with that backend, then restores the
    previous choice."""
    previous = _requested
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def table(name: str) -> KernelTable:
    """The kernel table of backend ``name``."""
    return TABLES[_checked(name)]


@functools.cache
def unavailable(name: str, device: torch.device) -> str | None:
    """Why backend ``name`` cannot run on tensors of ``device``, or None when it can."""
    return TABLES[name].unavailable(device)


def preferred(device: torch.device) -> str:
    """The backend the request takes for tensors of ``device``: the one asked for, or what
    ``auto`` takes there (before the fallbacks of :func:`select`)."""
    if _requested != "auto":
        return _requested
    return "cpu" if device.type == "cpu" else "torch"


def _refusal(name: str, tensors: list[Tensor], neuron: nn.Module | None) -> str | None:
    """Why backend ``name`` cannot run an operation on ``tensors`` (of one device) for
    ``neuron``, or None."""
    reason = unavailable(name, tensors[0].device)
    if reason is not None:
        return reason
    dtypes = TABLES[name].DTYPES
    if dtypes is not None:
        found = {t.dtype for t in tensors if t.dtype != torch.bool}
        if len(found) != 1 or not found <= dtypes:
            return f"it runs on {' or '.join(sorted(map(str, dtypes)))}, not {sorted(map(str, found))}"
    if neuron is not None:
        return TABLES[name].neuron_refusal(neuron, tensors[0])
    return None


def select(*tensors: Tensor | None, neuron: nn.Module | None = None) -> KernelTable:
    """The kernel table that runs an operation on ``tensors`` (for ``neuron``, if the
    operation is a neuron layer's): the requested backend's, or ``torch``'s where that one
    cannot run it, which the log says once per backend and reason."""
    present = [t for t in tensors if t is not None]
    name = preferred(present[0].device)
    reason = _refusal(name, present, neuron)
    if reason is None:
        return TABLES[name]
    if (name, reason) not in _told:
        _told.add((name, reason))
        _log.warning("spiking: backend %r cannot run this (%s); backend 'torch' runs it, with "
                     "the same results, more slowly", name, reason)
    return pytorch


def describe(device: torch.device | str) -> str:
    """One line for logs: the backend that runs on ``device``, and what was asked for."""
    device = torch.device(device)
    name = preferred(device)
    if unavailable(name, device) is not None:
        name = pytorch.NAME
    return f"spiking backend {name}: {TABLES[name].describe()} (requested {_requested})"
