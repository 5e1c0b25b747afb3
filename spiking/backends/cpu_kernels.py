"""The C kernels of the ``cpu`` backend: the pooling neuron's average pool and its gradient, the
packing of spikes and the Poisson input, compiled from ``csrc/cpu_kernels.c`` at first use; and
the build and cache of the neuron scans that :mod:`.codegen` generates (:func:`load_generated`).

They compute every value with the float operations of the PyTorch code they replace, in the
same order, so both give identical bits (tests/test_cpu_kernels.py). They need a C compiler (``$CC``, default
``cc``) the first time; the library is cached under ``$SPIKING_KERNEL_CACHE`` (default
``~/.cache/spiking-kernels``). Each function checks its arguments (:mod:`.arguments`): the C
code trusts them.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import math
import os
import platform
import re
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor

from .arguments import check_tensor, check_window

__all__ = ["available", "avg_pool", "avg_pool_backward", "build", "build_error", "cache_dir",
           "load_generated", "pack_spikes", "poisson_spikes", "threads_for", "write_atomically"]

_SOURCE = Path(__file__).with_name("csrc") / "cpu_kernels.c"
_FLAGS = ["-O3", "-std=c99", "-fPIC", "-shared", "-ffp-contract=off", "-fno-trapping-math"]
# OpenMP shares the thread pool of the runtime PyTorch has loaded; a compiler without it (Apple
# clang) builds single-threaded kernels.
_FLAG_SETS = ([*_FLAGS, "-fopenmp"], _FLAGS)
# A thread gets at least this much work (multiply-adds or neuron-steps: starting one costs
# about as much as 10^4 of them) and this many neurons (of a scan, which splits by neuron).
_WORK_PER_THREAD = 65536
_NEURONS_PER_THREAD = 1024
_log = logging.getLogger("spiking")


def threads_for(work: int, neurons: int | None = None) -> int:
    """OpenMP threads for a kernel call doing ``work`` operations over ``neurons`` independent
    neurons (if the call splits by neuron), at most ``torch.get_num_threads()``."""
    limit = torch.get_num_threads()
    if neurons is not None:
        limit = min(limit, neurons // _NEURONS_PER_THREAD)
    return max(1, min(limit, work // _WORK_PER_THREAD))


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader (another DDP rank) never sees part of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=path.suffix,
                                     delete=False) as file:
        file.write(text)
    os.replace(file.name, path)


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$SPIKING_KERNEL_CACHE``, default
    ``~/.cache/spiking-kernels``."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spiking-kernels"
    return Path(os.environ.get("SPIKING_KERNEL_CACHE", default))


def _compile(flags: list[str], target: Path, source: Path) -> None:
    """Build the library into ``target`` atomically: processes that compile at once (DDP ranks)
    each write their own temporary file, and a reader never sees a partial library."""
    target.parent.mkdir(parents=True, exist_ok=True)
    compiler = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory(dir=target.parent) as build_dir:
        partial = Path(build_dir) / target.name
        subprocess.run([compiler, *flags, str(source), "-o", str(partial)], check=True,
                       capture_output=True, text=True, timeout=120)
        os.replace(partial, target)


def build(source: Path = _SOURCE, what: str = "") -> Path:
    """The cached library of the C file ``source``, built first if needed, with the first flag
    set that compiles (also used by :mod:`.event_kernels` and the generated scans); a build
    says in the log what it compiled (``what``, else the file) and how long it took."""
    failures: list[Exception] = []
    for flags in _FLAG_SETS:
        key = f"{source.read_text()}{flags}{platform.machine()}".encode()
        target = cache_dir() / f"{source.stem}-{hashlib.sha256(key).hexdigest()[:16]}.so"
        try:
            if not target.exists():
                started = time.perf_counter()
                _compile(flags, target, source)
                _log.warning("spiking: compiled %s in %.1f s, cached in %s", what or source.name,
                             time.perf_counter() - started, target.parent)
            return target
        except (OSError, subprocess.SubprocessError) as error:
            failures.append(error)
    raise failures[0]


def load_generated(source: str, stem: str, what: str) -> ctypes.CDLL:
    """The library of generated C ``source``, from the cache or compiled now; each exported
    kernel takes ``(steps, neurons, arrays, threads)``."""
    path = cache_dir() / f"{stem}-{hashlib.sha256(source.encode()).hexdigest()[:16]}.c"
    if not path.exists():
        write_atomically(path, source)
    library = ctypes.CDLL(str(build(path, what)))
    for name in re.findall(r"^void (\w+)\(int64_t steps", source, flags=re.MULTILINE):
        function = getattr(library, name)
        function.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
        function.restype = None
    return library


_build_error: list[str] = []


def _declare(library: ctypes.CDLL) -> ctypes.CDLL:
    pointer, int64, double, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    library.pack_spikes.argtypes = [c_int, pointer, pointer, int64, c_int, ctypes.POINTER(double)]
    library.pack_spikes.restype = c_int
    library.avg_pool.argtypes = [c_int, pointer, pointer, int64, int64, int64, int64, c_int]
    library.avg_pool_backward.argtypes = [c_int, pointer, pointer, int64, int64, int64, int64,
                                          c_int]
    library.poisson_spikes.argtypes = [c_int, pointer, pointer, pointer, int64, int64, c_int]
    for name in ("avg_pool", "avg_pool_backward", "poisson_spikes"):
        getattr(library, name).restype = None
    return library


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The compiled kernels, or None when they cannot be built (:func:`build_error` says why)."""
    _build_error.clear()
    try:
        return _declare(ctypes.CDLL(str(build())))
    except (OSError, subprocess.SubprocessError) as error:
        detail = str(getattr(error, "stderr", None) or error).strip()
        _build_error.append(detail.splitlines()[-1] if detail else type(error).__name__)
        return None


def available() -> bool:
    """Whether the kernels are built (building them if needed)."""
    return _library() is not None


def build_error() -> str:
    """Why the kernels could not be built (the compiler's last line), or ``""``."""
    _library()
    return _build_error[0] if _build_error else ""


def _is_double(tensor: Tensor) -> bool:
    if tensor.dtype not in (torch.float32, torch.float64) or tensor.device.type != "cpu":
        raise ValueError(f"the C kernels take float32 or float64 CPU tensors, not {tensor.dtype} "
                         f"on {tensor.device}")
    return tensor.dtype == torch.float64


def pack_spikes(x: Tensor) -> tuple[Tensor, Tensor | None]:
    """``(int8 codes, scale)`` with ``x == codes * scale`` if ``x`` holds only ``-c, 0, c`` for
    one finite c (``scale`` a 0-dim tensor of ``x.dtype``), else ``(x, None)``: the packing of
    :func:`.pytorch.pack_spikes` in one pass instead of five."""
    is_double = _is_double(x)
    check_tensor(x, x.shape, "x")
    codes = torch.empty(x.shape, dtype=torch.int8)
    scale = ctypes.c_double()
    packed = _library().pack_spikes(is_double, x.data_ptr(), codes.data_ptr(), x.numel(),
                                    threads_for(x.numel()), ctypes.byref(scale))
    return (codes, torch.tensor(scale.value, dtype=x.dtype)) if packed else (x, None)


def poisson_spikes(uniform: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    """``(magnitude > uniform).to(dtype) * sign``, written over ``uniform`` ``[T, *shape]`` and
    returned: the spikes of :func:`.reference.poisson_encode` in one pass instead of three, the
    same bits. ``magnitude`` and ``sign`` have ``shape``."""
    is_double = _is_double(uniform)
    check_tensor(uniform, uniform.shape, "uniform")
    check_tensor(magnitude, uniform.shape[1:], "magnitude", uniform.dtype)
    check_tensor(sign, uniform.shape[1:], "sign", uniform.dtype)
    steps, neurons = uniform.shape[0], magnitude.numel()
    _library().poisson_spikes(is_double, uniform.data_ptr(), magnitude.data_ptr(),
                              sign.data_ptr(), steps, neurons,
                              threads_for(steps * neurons, neurons))
    return uniform


def avg_pool(x: Tensor, kernel_size: int) -> Tensor:
    """``F.avg_pool2d(x, kernel_size)`` (stride ``kernel_size``, no padding) over the last two
    dimensions of ``x`` ``[..., H, W]``: ``[..., H // k, W // k]``, the same bits."""
    is_double = _is_double(x)
    check_tensor(x, x.shape, "x")
    *planes, height, width = x.shape
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be at least 1, got {kernel_size}")
    pooled = x.new_empty((*planes, height // kernel_size, width // kernel_size))
    _library().avg_pool(is_double, x.data_ptr(), pooled.data_ptr(), math.prod(planes), height,
                        width, kernel_size, threads_for(x.numel()))
    return pooled


def avg_pool_backward(grad_pooled: Tensor, kernel_size: int, height: int, width: int) -> Tensor:
    """The gradient of :func:`avg_pool`: ``grad_pooled`` ``[..., H // k, W // k]`` divided by
    k^2 and copied to every pixel of its window in a new ``[..., height, width]``, zeros in the
    rows and columns the pool dropped; the bits of :func:`.reference.average_pool_backward`."""
    is_double = _is_double(grad_pooled)
    check_tensor(grad_pooled, grad_pooled.shape, "grad_pooled")
    *planes, rows, cols = grad_pooled.shape
    check_window(kernel_size, (rows, cols), (height, width))
    image = grad_pooled.new_empty((*planes, height, width))
    _library().avg_pool_backward(is_double, grad_pooled.data_ptr(), image.data_ptr(),
                                 math.prod(planes), height, width, kernel_size,
                                 threads_for(image.numel()))
    return image
