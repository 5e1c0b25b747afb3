"""The one place that chooses which implementation runs the spiking layers.

Every implementation computes the same numbers (the tests compare each with the reference);
they differ in speed, memory and where they run:

| name        | what runs                                                    | tensors     |
|-------------|--------------------------------------------------------------|-------------|
| ``reference`` | the algorithm step by step, slowest and clearest (:mod:`spiking.reference`) | any device |
| ``torch``     | PyTorch loops over time steps of time-folded layers (:mod:`spiking.functional`) | any device |
| ``cpu``       | fused C kernels for the scans (:mod:`spiking.cpu_kernels`), event-driven synapses (:mod:`spiking.event_kernels`) | CPU |
| ``triton``    | fused Triton kernels, the time loop inside (:mod:`spiking.triton_kernels`) | CUDA; CPU under ``TRITON_INTERPRET=1`` (tests) |

``auto``, the default, takes ``cpu`` for CPU tensors and ``torch`` elsewhere. ``triton`` runs
only when asked for by name: its kernels are tested in Triton's interpreter but have not yet run
on a GPU (``benchmarks/cuda_check.sh`` is the check that decides whether ``auto`` may take it). Choose another with
the environment variable ``SPIKING_BACKEND=<name>``, :func:`set_backend` or the context manager
:func:`use_backend`. A fast backend that cannot run on a tensor's device (no C compiler, a CUDA
tensor for ``cpu``, no triton) falls back to ``torch`` with one warning, never silently.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator

import torch

__all__ = ["BACKENDS", "EVENT_DENSITY_MAX", "backend_for", "describe", "event_density_max",
           "requested_backend", "set_backend", "use_backend"]


# The ``cpu`` backend runs a synapse layer event-driven (spiking.event_kernels) in a chunk whose
# input spike train has at most this fraction of its entries nonzero, densely above it: per kind
# of layer, where forward plus backward of the two paths cost the same on the 2-core CPU
# (benchmarks/crossover.py; table in benchmarks/README.md, *Event-driven synapses*: 3x3 and 5x5
# convolutions 0.16 to 0.25, lower for one input channel and 1x1; linear layers 0.02 to 0.05).
# One number sets both kinds: 0 turns the event-driven path off, 1 forces it (tests).
EVENT_DENSITY_MAX: float | dict[str, float] = {"conv": 0.15, "linear": 0.03}


def event_density_max(kind: str) -> float:
    """The crossover density of :data:`EVENT_DENSITY_MAX` for ``kind``, ``conv`` or ``linear``."""
    if isinstance(EVENT_DENSITY_MAX, dict):
        return EVENT_DENSITY_MAX[kind]
    return EVENT_DENSITY_MAX


def _cpu_unavailable(device: torch.device) -> str | None:
    if device.type != "cpu":
        return f"it runs on CPU tensors, not {device.type}"
    from . import cpu_kernels, event_kernels  # import this module: the choice is per call

    if not (cpu_kernels.available() and event_kernels.available()):
        return (f"its C kernels could not be built: {cpu_kernels.build_error()}; set CC to a C "
                "compiler, or SPIKING_KERNEL_CACHE to a writable folder")
    return None


def _triton_unavailable(device: torch.device) -> str | None:
    from . import triton_kernels

    return triton_kernels.unavailable_reason(device)


def _runs_anywhere(device: torch.device) -> str | None:
    return None


# name -> (what it is, why it cannot run on a device: None when it can)
BACKENDS: dict[str, tuple[str, Callable[[torch.device], str | None]]] = {
    "reference": ("the algorithm step by step (spiking.reference)", _runs_anywhere),
    "torch": ("PyTorch loops over time-folded layers (spiking.functional)", _runs_anywhere),
    "cpu": ("fused C kernels (spiking.cpu_kernels), event-driven synapses "
            "(spiking.event_kernels)", _cpu_unavailable),
    "triton": ("fused Triton kernels (spiking.triton_kernels)", _triton_unavailable),
}


def _check_name(name: str) -> str:
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown spiking backend {name!r}; choose auto or one of "
                         f"{', '.join(BACKENDS)}")
    return name


_requested = _check_name(os.environ.get("SPIKING_BACKEND", "auto").strip().lower() or "auto")
_warned: set[tuple[str, str]] = set()  # (backend, reason) pairs already reported


def requested_backend() -> str:
    """The backend asked for: ``auto`` or one of :data:`BACKENDS`."""
    return _requested


def set_backend(name: str) -> None:
    """Run the spiking layers with ``name`` (``auto`` or one of :data:`BACKENDS`) from now on."""
    global _requested
    _requested = _check_name(name)


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


def _preferred(device: torch.device) -> str:
    if _requested != "auto":
        return _requested
    return "cpu" if device.type == "cpu" else "torch"


def backend_for(device: torch.device | str) -> str:
    """The backend that runs spiking layers on tensors of ``device``: the requested one, or
    ``torch`` (after one warning) where it cannot run there."""
    device = torch.device(device)
    chosen = _preferred(device)
    reason = BACKENDS[chosen][1](device)
    if reason is None:
        return chosen
    if (chosen, reason) not in _warned:
        _warned.add((chosen, reason))
        warnings.warn(f"spiking: backend {chosen!r} cannot run here ({reason}); using 'torch', "
                      "which gives the same results more slowly", RuntimeWarning, stacklevel=2)
    return "torch"


def describe(device: torch.device | str) -> str:
    """One line for logs: the backend that runs on ``device``, and what was asked for."""
    chosen = backend_for(device)
    line = f"spiking backend {chosen}: {BACKENDS[chosen][0]} (requested {_requested})"
    if chosen == "cpu":
        line += (f"; synapses event-driven up to input density conv "
                 f"{event_density_max('conv')}, linear {event_density_max('linear')}")
    return line
