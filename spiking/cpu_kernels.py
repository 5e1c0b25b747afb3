"""Fused CPU kernels for the neuron scans, the pooling neuron's average pool and the packing of
spikes, compiled from ``csrc/cpu_kernels.c`` at first use.

A PyTorch scan costs a few elementwise ops per time step, each a pass over the layer's
neurons; the C kernels walk each block of neurons through all steps of a chunk in one pass,
pack a synapse's input spikes in one pass instead of five, and average-pool three times as fast
as ``F.avg_pool2d`` on this layout (the pool's gradient, spread back over its windows, 1.5x). They give identical bits (``tests/test_cpu_kernels.py``
compares them with the PyTorch code). They
need a C compiler (``$CC``, default ``cc``) the first time; the library is cached under
``$SPIKING_KERNEL_CACHE`` (default ``~/.cache/spiking-kernels``). They run where
:mod:`spiking.backend` chooses the ``cpu`` backend (the default for CPU tensors); without a
compiler the neuron functions use their PyTorch loops, with the same results, after one warning.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from .backend import backend_for

__all__ = ["available", "avg_pool", "build_error", "gradient_scan", "lif_scan", "pack_spikes",
           "poisson_spikes", "upsample", "usable"]

_SOURCE = Path(__file__).with_name("csrc") / "cpu_kernels.c"
_FLAGS = ["-O3", "-std=c99", "-fPIC", "-shared", "-ffp-contract=off", "-fno-trapping-math"]
# OpenMP shares the thread pool of the runtime PyTorch has loaded; a compiler without it (Apple
# clang) builds single-threaded kernels.
_FLAG_SETS = ([*_FLAGS, "-fopenmp"], _FLAGS)
# A thread gets at least this many neuron-steps (starting one costs about as much as a scan
# of 10^4 of them) and this many neurons (a block of the kernels).
_WORK_PER_THREAD = 65536
_NEURONS_PER_THREAD = 1024

def _cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spiking-kernels"
    return Path(os.environ.get("SPIKING_KERNEL_CACHE", default))


def _compile(flags: list[str], target: Path, source: Path) -> None:
    """Build the library into ``target`` atomically: processes that compile at once (DDP ranks)
    each write their own temporary file, and a reader never sees a partial library."""
    target.parent.mkdir(parents=True, exist_ok=True)
    compiler = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory(dir=target.parent) as build:
        partial = Path(build) / target.name
        subprocess.run([compiler, *flags, str(source), "-o", str(partial)], check=True,
                       capture_output=True, text=True, timeout=120)
        os.replace(partial, target)


def build(source: Path = _SOURCE) -> Path:
    """The cached library of the C file ``source``, built first if needed, with the first flag
    set that compiles (also used by :mod:`spiking.event_kernels`)."""
    failures: list[Exception] = []
    for flags in _FLAG_SETS:
        key = f"{source.read_text()}{flags}{platform.machine()}".encode()
        target = _cache_dir() / f"{source.stem}-{hashlib.sha256(key).hexdigest()[:16]}.so"
        try:
            if not target.exists():
                _compile(flags, target, source)
            return target
        except (OSError, subprocess.SubprocessError) as error:
            failures.append(error)
    raise failures[0]


_build_error: list[str] = []


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The compiled kernels, or None when they cannot be built (:func:`build_error` says why)."""
    _build_error.clear()
    try:
        library = ctypes.CDLL(str(build()))
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", None) or error
        _build_error.append(str(detail).strip().splitlines()[-1] if str(detail).strip() else
                            type(error).__name__)
        return None
    pointer, int64, double = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    library.lif_scan.argtypes = [ctypes.c_int, pointer, pointer, pointer, pointer, pointer,
                                 int64, int64, double, double, ctypes.c_int]
    library.gradient_scan.argtypes = [ctypes.c_int, pointer, pointer, pointer, pointer, pointer,
                                      int64, int64, ctypes.c_int]
    library.pack_spikes.argtypes = [ctypes.c_int, pointer, pointer, int64, ctypes.c_int,
                                    ctypes.POINTER(double)]
    library.lif_scan.restype = library.gradient_scan.restype = None
    library.avg_pool.argtypes = library.upsample.argtypes = [
        ctypes.c_int, pointer, pointer, int64, int64, int64, int64, ctypes.c_int]
    library.pack_spikes.restype = ctypes.c_int
    library.poisson_spikes.argtypes = [ctypes.c_int, pointer, pointer, pointer, int64, int64,
                                       ctypes.c_int]
    library.poisson_spikes.restype = None
    library.avg_pool.restype = library.upsample.restype = None
    return library


def available() -> bool:
    """Whether the kernels are built (building them if needed)."""
    return _library() is not None


def build_error() -> str:
    """Why the kernels could not be built (the compiler's last line), or ``""``."""
    _library()
    return _build_error[0] if _build_error else ""


def usable(*tensors: Tensor | None) -> bool:
    """Whether the kernels run on ``tensors``: the ``cpu`` backend is chosen
    (:func:`spiking.backend.backend_for`) and they are contiguous float32/float64 CPU tensors
    (bool for spike trains) of one float dtype."""
    present = [t for t in tensors if t is not None]
    floats = {t.dtype for t in present if t.dtype != torch.bool}
    return (len(floats) == 1 and floats <= {torch.float32, torch.float64}
            and all(t.device.type == "cpu" and t.is_contiguous() for t in present)
            and backend_for(present[0].device) == "cpu")


def _pointer(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _check(tensor: Tensor | None, shape: torch.Size, name: str,
           dtype: torch.dtype | None = None) -> None:
    """The C code trusts its arguments: anything else would read or write past a buffer."""
    if tensor is None:
        return
    if tensor.shape != shape:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
    if dtype is not None and tensor.dtype != dtype:
        raise ValueError(f"{name} has dtype {tensor.dtype}, expected {dtype}")


def _check_scan(values: Tensor, membrane: Tensor, spikes_out: Tensor | None,
                trace: Tensor | None, count: Tensor | None) -> None:
    """The arguments of a LIF scan kernel fit ``values`` ``[T, B, ...]``."""
    _check(membrane, values.shape[1:], "membrane")
    _check(spikes_out, values.shape, "spikes_out", torch.bool)
    _check(trace, membrane.shape, "trace")
    _check(count, membrane.shape, "count")
    if (trace is None) != (count is None):
        raise ValueError("trace and count go together")


def _threads(steps: int, neurons: int) -> int:
    return max(1, min(torch.get_num_threads(), steps * neurons // _WORK_PER_THREAD,
                      neurons // _NEURONS_PER_THREAD))


def lif_scan(values: Tensor, threshold: float, leak: float, membrane: Tensor,
             spikes_out: Tensor | None = None, trace: Tensor | None = None,
             count: Tensor | None = None) -> Tensor:
    """The loop of :func:`spiking.functional.lif_scan`, in place: ``values`` ``[T, B, ...]``
    holds the currents and receives the spikes; ``membrane``, ``trace`` and ``count``
    (``[B, ...]``; the leak-weighted spike sum and the spike count, both or neither) are
    updated; ``spikes_out`` (bool ``[T, B, ...]``) receives the spikes too. Check :func:`usable`
    first."""
    steps, neurons = values.shape[0], membrane.numel()
    _check_scan(values, membrane, spikes_out, trace, count)
    _library().lif_scan(values.dtype == torch.float64, _pointer(values), _pointer(spikes_out),
                        _pointer(membrane), _pointer(trace), _pointer(count), steps, neurons,
                        threshold, leak, _threads(steps, neurons))
    return values


def gradient_scan(grad: Tensor, spikes: Tensor, scale: Tensor, carry: Tensor) -> Tensor:
    """The loop of :func:`spiking.functional.spike_gradient_scan` with a ``[B, ...]`` scale and
    carry; returns the new ``[T, B, ...]`` gradient of the currents. Check :func:`usable`
    first."""
    _check(spikes, grad.shape, "spikes", torch.bool)
    _check(scale, grad.shape[1:], "scale")
    _check(carry, grad.shape[1:], "carry")
    out = torch.empty_like(grad)
    steps, neurons = grad.shape[0], carry.numel()
    _library().gradient_scan(grad.dtype == torch.float64, _pointer(grad), _pointer(spikes),
                             _pointer(scale), _pointer(carry), _pointer(out), steps, neurons,
                             _threads(steps, neurons))
    return out


def pack_spikes(x: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(int8 codes, scale)`` with ``x == codes * scale`` if ``x`` holds only ``-c, 0, c``
    for one c (then ``scale`` is c, a 0-dim tensor of ``x.dtype``), else None: the check and
    the packing of :func:`spiking.synapses.compact_spikes` in one pass. Check :func:`usable`
    first."""
    codes = torch.empty(x.shape, dtype=torch.int8)
    scale = ctypes.c_double()
    packed = _library().pack_spikes(x.dtype == torch.float64, _pointer(x), _pointer(codes),
                                    x.numel(), _threads(1, x.numel()), ctypes.byref(scale))
    return (codes, torch.tensor(scale.value, dtype=x.dtype)) if packed else None


def poisson_spikes(uniform: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    """``(magnitude > uniform).to(dtype) * sign``, written over ``uniform`` ``[T, *shape]`` and
    returned: the spikes of :func:`spiking.functional.poisson_encode` in one pass instead of
    three, the same bits. ``magnitude`` and ``sign`` have ``shape``. Check :func:`usable`
    first."""
    _check(magnitude, uniform.shape[1:], "magnitude", uniform.dtype)
    _check(sign, uniform.shape[1:], "sign", uniform.dtype)
    steps, neurons = uniform.shape[0], magnitude.numel()
    _library().poisson_spikes(uniform.dtype == torch.float64, _pointer(uniform),
                              _pointer(magnitude), _pointer(sign), steps, neurons,
                              _threads(steps, neurons))
    return uniform


def avg_pool(x: Tensor, kernel_size: int) -> Tensor:
    """``F.avg_pool2d(x, kernel_size)`` (stride ``kernel_size``, no padding) over the last two
    dimensions of ``x`` ``[..., H, W]``: ``[..., H // k, W // k]``. Check :func:`usable` first."""
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be at least 1, got {kernel_size}")
    *planes, height, width = x.shape
    pooled = x.new_empty((*planes, height // kernel_size, width // kernel_size))
    _library().avg_pool(x.dtype == torch.float64, _pointer(x), _pointer(pooled),
                        math.prod(planes), height, width, kernel_size, _threads(1, x.numel()))
    return pooled


def upsample(pooled: Tensor, kernel_size: int, height: int, width: int) -> Tensor:
    """The gradient layout of :func:`avg_pool`: ``pooled`` ``[..., H // k, W // k]`` copied to
    every pixel of its window in a new ``[..., height, width]``, zeros in the rows and columns
    the pool dropped. Check :func:`usable` first."""
    *planes, rows, cols = pooled.shape
    if kernel_size < 1 or (rows, cols) != (height // kernel_size, width // kernel_size):
        raise ValueError(f"cannot upsample {rows}x{cols} by {kernel_size} to {height}x{width}")
    image = pooled.new_empty((*planes, height, width))
    _library().upsample(pooled.dtype == torch.float64, _pointer(pooled), _pointer(image),
                        math.prod(planes), height, width, kernel_size, _threads(1, image.numel()))
    return image
