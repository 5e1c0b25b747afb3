"""Fused Triton kernels for CUDA: the neuron scans, the pooling neuron (pool and scan fused,
forward and backward), the average pool alone (evaluation), the output integrator and the
packing of spikes; the counterparts of :mod:`spiking.cpu_kernels` (same arguments where both
have a function, same bits as the PyTorch loops).

A PyTorch scan launches a few elementwise kernels per time step; here one launch takes every
neuron of a layer through all steps of a chunk, so a training step launches the same number of
kernels whatever T is. The kernels themselves are in :mod:`spiking.triton_jit`, imported at
first use. They run where :mod:`spiking.backend` chooses the ``triton`` backend: on CUDA tensors
(the default there when triton imports), and on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``, slow; for the tests) when the backend is asked for by name.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import math
import struct
from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor

from .backend import backend_for
from .cpu_kernels import _check, _check_scan  # the same refusal of arguments that overrun

__all__ = ["available", "avg_pool", "gradient_scan", "lif_scan", "output_integrator",
           "pack_spikes", "pooling_gradient_scan", "pooling_scan", "unavailable_reason",
           "usable"]

# Neurons per program of a scan: the membranes of a block live in registers over all steps.
_BLOCK = 1024
# Values per program of the spike packing: fewer programs, fewer atomics on its two results.
_PACK_BLOCK = 4096
_INT64_MAX = 0x7FFFFFFFFFFFFFFF


@functools.cache
def _jit() -> ModuleType | str:
    """The kernel module, or why it cannot be imported."""
    try:
        return importlib.import_module(".triton_jit", __package__)
    except Exception as error:  # not installed, or an install that fails to load: use torch
        return f"triton cannot be imported ({type(error).__name__}: {error})"


def _interpreting() -> bool:
    """Whether the kernels run in Triton's interpreter (decided when they were imported)."""
    module = _jit()
    return not isinstance(module, str) and module.INTERPRETED


def available() -> bool:
    """Whether triton imports (and with it the kernels)."""
    return not isinstance(_jit(), str)


def unavailable_reason(device: torch.device) -> str | None:
    """Why the kernels cannot run on tensors of ``device``, or None when they can."""
    module = _jit()
    if isinstance(module, str):
        return module
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if _interpreting():
            return None
        return ("it runs on CUDA tensors, or on CPU tensors under Triton's interpreter "
                "(TRITON_INTERPRET=1 before triton is first used)")
    return f"it runs on CUDA tensors, not {device.type}"


def usable(*tensors: Tensor | None) -> bool:
    """Whether the kernels run on ``tensors``: the ``triton`` backend is chosen
    (:func:`spiking.backend.backend_for`) and they are contiguous float32/float64 tensors (bool
    for spike trains) of one float dtype on one device."""
    present = [t for t in tensors if t is not None]
    floats = {t.dtype for t in present if t.dtype != torch.bool}
    return (len(floats) == 1 and floats <= {torch.float32, torch.float64}
            and len({t.device for t in present}) == 1
            and all(t.is_contiguous() for t in present)
            and backend_for(present[0].device) == "triton")


@functools.lru_cache(maxsize=64)
def _constants(dtype: torch.dtype, device: torch.device, *values: float) -> Tensor:
    """``values`` in ``dtype`` on ``device``, made once: a Python float reaches a kernel as a
    float32 argument, and a float64 scan needs its threshold and leak in float64, exactly as
    PyTorch converts them."""
    return torch.tensor(values, dtype=dtype, device=device)


def _launch(kernel: Callable, size: int, device: torch.device, *args, block: int = _BLOCK,
            **constexprs) -> None:
    """Run ``kernel`` over ``size`` items in blocks of ``block``, without fused multiply-adds
    (the PyTorch loops round each product)."""
    if size == 0:
        return
    grid = (-(-size // block),)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        kernel[grid](*args, BLOCK=block, enable_fp_fusion=False, **constexprs)


def lif_scan(values: Tensor, threshold: float, leak: float, membrane: Tensor,
             spikes_out: Tensor | None = None, trace: Tensor | None = None,
             count: Tensor | None = None) -> Tensor:
    """As :func:`spiking.cpu_kernels.lif_scan`: ``values`` ``[T, B, ...]`` holds the currents
    and receives the spikes, in place; ``membrane`` (and ``trace``, ``count``, both or neither)
    ``[B, ...]`` are updated; ``spikes_out`` (bool ``[T, B, ...]``) receives the spikes too.
    Check :func:`usable` first."""
    _check_scan(values, membrane, spikes_out, trace, count)
    constants = _constants(values.dtype, values.device, threshold, leak)
    neurons = membrane.numel()
    _launch(_jit().lif_scan, neurons, values.device, values,
            values if spikes_out is None else spikes_out, membrane,
            membrane if trace is None else trace, membrane if count is None else count,
            constants, values.shape[0], neurons, HAS_SPIKES=spikes_out is not None,
            HAS_SUMS=trace is not None)
    return values


def gradient_scan(grad: Tensor, spikes: Tensor, scale: Tensor | float | None = None,
                  carry: Tensor | None = None) -> Tensor:
    """The loop of :func:`spiking.functional.spike_gradient_scan` (``scale`` per neuron
    ``[B, ...]``, one number or None; ``carry`` ``[B, ...]`` or None for 0); returns the new
    ``[T, B, ...]`` gradient of the currents. Check :func:`usable` first."""
    step_shape = grad.shape[1:]
    _check(spikes, grad.shape, "spikes", torch.bool)
    _check(carry, step_shape, "carry")
    per_neuron = isinstance(scale, Tensor)
    if per_neuron:
        scale = scale.expand(step_shape).contiguous()
    elif scale is not None:
        scale = _constants(grad.dtype, grad.device, scale)
    out = torch.empty_like(grad)
    neurons = step_shape.numel()
    _launch(_jit().gradient_scan, neurons, grad.device, grad, spikes,
            grad if scale is None else scale, grad if carry is None else carry, out,
            grad.shape[0], neurons, HAS_SCALE=scale is not None, SCALE_PER_NEURON=per_neuron,
            HAS_CARRY=carry is not None)
    return out


def output_integrator(current: Tensor, leak: float) -> Tensor:
    """``M_T`` of ``M <- leak * (M + I_t)`` from ``M = 0`` over ``current`` ``[T, B, ...]``:
    the loop of :func:`spiking.functional.output_integrator`, in one launch. Check
    :func:`usable` first."""
    membrane = current.new_empty(current.shape[1:])
    neurons = membrane.numel()
    _launch(_jit().output_integrator, neurons, current.device, current, membrane,
            _constants(current.dtype, current.device, leak), current.shape[0], neurons)
    return membrane


def pack_spikes(x: Tensor) -> tuple[Tensor, Tensor] | None:
    """As :func:`spiking.cpu_kernels.pack_spikes`: ``(int8 codes, scale)`` with
    ``x == codes * scale`` if ``x`` holds only ``-c, 0, c`` for one finite c (``scale`` a 0-dim
    tensor of ``x.dtype`` on ``x.device``), else None. One launch and one read of two numbers.
    Check :func:`usable` first."""
    codes = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    magnitudes = torch.tensor([0, _INT64_MAX], dtype=torch.int64, device=x.device)
    _launch(_jit().pack_spikes, x.numel(), x.device, x, codes, magnitudes, x.numel(),
            block=_PACK_BLOCK)
    largest, smallest = magnitudes.tolist()
    if largest and largest != smallest:
        return None
    # the bits of |x| back to the float, as a Python number (exact for both dtypes)
    wide = x.dtype == torch.float64
    scale = struct.unpack("<d" if wide else "<f", struct.pack("<q" if wide else "<i", largest))[0]
    if not math.isfinite(scale):
        return None
    return codes, torch.tensor(scale, dtype=x.dtype, device=x.device)


def avg_pool(x: Tensor, kernel_size: int) -> Tensor:
    """``F.avg_pool2d(x, kernel_size)`` over the last two dimensions of ``x`` ``[..., H, W]``:
    ``[..., H // k, W // k]``, same bits. Check :func:`usable` first."""
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be at least 1, got {kernel_size}")
    *planes, height, width = x.shape
    rows, cols = height // kernel_size, width // kernel_size
    pooled = x.new_empty((*planes, rows, cols))
    _launch(_jit().avg_pool, pooled.numel(), x.device, x, pooled, pooled.numel(), height, width,
            rows, cols, K=kernel_size)
    return pooled


def pooling_scan(image: Tensor, threshold: float, kernel_size: int, membrane: Tensor,
                 spikes_out: Tensor | None = None) -> Tensor:
    """The pooling neuron's forward in one launch: :func:`avg_pool` of ``image``
    ``[T, B, C, H, W]`` into IF neurons continuing from ``membrane`` ``[B, C, H // k, W // k]``
    (updated in place), as :func:`lif_scan` without leak; returns the spikes
    ``[T, B, C, H // k, W // k]`` and writes their bool copy into ``spikes_out``. Check
    :func:`usable` first."""
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be at least 1, got {kernel_size}")
    steps, *planes, height, width = image.shape
    rows, cols = height // kernel_size, width // kernel_size
    out = image.new_empty((steps, *planes, rows, cols))
    _check(membrane, out.shape[1:], "membrane")
    _check(spikes_out, out.shape, "spikes_out", torch.bool)
    neurons = membrane.numel()
    _launch(_jit().pooling_scan, neurons, image.device, image, out,
            out if spikes_out is None else spikes_out, membrane,
            _constants(image.dtype, image.device, threshold), steps, neurons,
            image[0].numel(), height, width, rows, cols, K=kernel_size,
            HAS_SPIKES=spikes_out is not None)
    return out


def pooling_gradient_scan(grad: Tensor, spikes: Tensor, kernel_size: int, carry: Tensor,
                          height: int, width: int) -> tuple[Tensor, Tensor]:
    """The pooling neuron's backward in one launch: :func:`gradient_scan` of ``grad``
    ``[T, B, C, H // k, W // k]`` with the factor ``1 / k^2`` from ``carry``, spread over the
    pooling windows as :func:`upsample` into ``[T, B, C, height, width]``. Returns that and
    the ``[B, C, H // k, W // k]`` delta of step 0 (the carry for the chunk before). Check
    :func:`usable` first."""
    steps, *planes, rows, cols = grad.shape
    if kernel_size < 1 or (rows, cols) != (height // kernel_size, width // kernel_size):
        raise ValueError(f"cannot upsample {rows}x{cols} by {kernel_size} to {height}x{width}")
    _check(spikes, grad.shape, "spikes", torch.bool)
    _check(carry, grad.shape[1:], "carry")
    covered = height == rows * kernel_size and width == cols * kernel_size
    shape = (steps, *planes, height, width)
    image_grad = grad.new_empty(shape) if covered else grad.new_zeros(shape)
    first = torch.empty_like(carry)
    neurons = carry.numel()
    _launch(_jit().pooling_gradient_scan, neurons, grad.device, grad, spikes, carry, image_grad,
            first, _constants(grad.dtype, grad.device, 1.0 / (kernel_size * kernel_size)),
            steps, neurons, image_grad[0].numel(), height, width, rows, cols, K=kernel_size)
    return image_grad, first
