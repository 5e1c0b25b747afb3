"""Event-driven C kernels of the ``cpu`` backend for synapses fed by spikes, compiled from
``csrc/event_kernels.c`` at first use (as :mod:`.cpu_kernels`, same flags, cache and OpenMP
thread pool).

A spike train holds few nonzero entries (1 to 7 % in a trained LeNet), so a convolution or linear
layer over it can follow its events: the forward adds each event's weight columns to the output
around it, the weight gradient correlates each event with the output's gradient around it, and
the input gradient is a dot product per event. Each costs ``C_out * k * k`` per event instead of
per input entry. :mod:`.cpu` decides per layer and chunk, from the measured density, whether
they or the dense PyTorch ops run (:data:`.cpu.EVENT_DENSITY_MAX`).

Events of ``x`` ``[images, C, H, W]`` (or ``[images, F]``): ``offsets`` ``[images + 1]`` into
``positions`` (int32 ``c * H * W + y * W + x``, stored as ``~p`` for a ``-c`` spike), and the
scale ``c``. They are also what a synapse keeps for its backward: 4 bytes per spike instead of
the 1 byte per entry of int8 codes.
"""
from __future__ import annotations

import ctypes
import functools
import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .cpu_kernels import build, threads_for

__all__ = ["Events", "available", "conv_backward", "conv_forward", "find_events"]

_SOURCE = Path(__file__).with_name("csrc") / "event_kernels.c"
_INT32_MAX = 2**31 - 1
_MAX_KERNEL = 32  # MAX_K of the C code


@functools.cache
def _library() -> ctypes.CDLL | None:
    try:
        library = ctypes.CDLL(str(build(_SOURCE)))
    except (OSError, subprocess.SubprocessError):
        return None
    pointer, int64, double, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    library.find_events.argtypes = [c_int, pointer, int64, int64, int64, pointer, pointer,
                                    ctypes.POINTER(double), c_int]
    library.find_events.restype = int64
    library.event_forward.argtypes = [c_int, pointer, pointer, pointer, double, pointer, pointer,
                                      c_int]
    library.event_forward.restype = c_int
    library.event_backward.argtypes = [c_int, pointer, pointer, pointer, double, pointer, pointer,
                                       pointer, pointer, c_int]
    library.event_backward.restype = c_int
    return library


def available() -> bool:
    """Whether the kernels are built (building them if needed)."""
    return _library() is not None


@dataclass
class Events:
    """The nonzero entries of a spike train ``[images, *image_shape]`` holding ``-c, 0, c``.

    Attributes:
        offsets: int64 ``[images + 1]``: image n's events are ``positions[offsets[n]:
            offsets[n + 1]]``.
        positions: int32 ``[events]``: flat index in the image, ``~index`` for a ``-c`` spike.
        scale: c.
        image_shape: ``(C, H, W)`` or ``(F,)``.
        dtype: the dtype of the spike train.
        consistent: offsets and positions are known to fit each other and ``image_shape`` (set
            by :func:`find_events`); otherwise the kernels check them at every call.
    """

    offsets: Tensor
    positions: Tensor
    scale: float
    image_shape: tuple[int, ...]
    dtype: torch.dtype
    consistent: bool = field(default=False, repr=False, compare=False)

    @property
    def images(self) -> int:
        return self.offsets.numel() - 1

    @property
    def density(self) -> float:
        return self.positions.numel() / max(1, self.images * math.prod(self.image_shape))


def _work(events: Events, weight_cl: Tensor, outputs: int) -> int:
    """Multiply-adds of one pass over the events, plus the output entries written."""
    return events.positions.numel() * weight_cl[0].numel() + outputs


def find_events(x: Tensor, max_events: int | None = None) -> Events | None:
    """The :class:`Events` of ``x`` ``[images, ...]`` (contiguous float32/float64 CPU), found in
    one pass over it; None if it holds more than ``max_events`` nonzero entries (default: no
    limit), or is not a spike train: a nonzero other than ``c`` or ``-c``, where c is the
    magnitude of its first nonzero (and finite), or an image too large for int32 positions."""
    images = x.shape[0]
    size = x[0].numel() if images else 0
    if size > _INT32_MAX:
        return None
    capacity = x.numel() if max_events is None else max(0, min(max_events, x.numel()))
    offsets = torch.empty(images + 1, dtype=torch.int64)
    positions = torch.empty(capacity, dtype=torch.int32)
    scale = ctypes.c_double()
    found = _library().find_events(x.dtype == torch.float64, x.data_ptr(), images, size,
                                   capacity, offsets.data_ptr(), positions.data_ptr(),
                                   ctypes.byref(scale), threads_for(x.numel()))
    if found < 0:
        return None
    # A copy of the right size: a view would keep the whole buffer alive for the backward.
    return Events(offsets, positions[:found].clone(), scale.value, tuple(x.shape[1:]), x.dtype,
                  consistent=True)


def _consistent(offsets: Tensor, positions: Tensor, size: int) -> bool:
    """Whether ``offsets`` and ``positions`` are events of images of ``size`` entries."""
    return (offsets.dtype == torch.int64 and positions.dtype == torch.int32
            and offsets.numel() >= 1 and int(offsets[0]) == 0
            and int(offsets[-1]) == positions.numel() and not bool((offsets.diff() < 0).any())
            and (positions.numel() == 0
                 or -size <= int(positions.min()) <= int(positions.max()) < size))


def _geometry(events: Events, weight_cl: Tensor, stride: int, padding: int
              ) -> tuple[Tensor, tuple[int, int]]:
    """The kernels' ``shape`` argument, checked against the buffers they will touch."""
    channels, height, width = (events.image_shape if len(events.image_shape) == 3
                               else (events.image_shape[0], 1, 1))
    cin, k, k2, cout = weight_cl.shape
    if ((cin, k) != (channels, k2) or not 1 <= k <= _MAX_KERNEL or stride < 1 or padding < 0
            or not weight_cl.is_contiguous()):
        raise ValueError(f"weight [C_in, k, k, C_out] {tuple(weight_cl.shape)} does not fit "
                         f"events of images {events.image_shape} (stride {stride}, padding "
                         f"{padding})")
    size = channels * height * width
    if not events.consistent and not _consistent(events.offsets, events.positions, size):
        raise ValueError("events are inconsistent: offsets must rise from 0 to the number of "
                         f"positions, positions lie in [-{size}, {size})")
    if weight_cl.dtype != events.dtype:
        raise ValueError(f"weight dtype {weight_cl.dtype} differs from the spikes' {events.dtype}")
    out_h = (height + 2 * padding - k) // stride + 1
    out_w = (width + 2 * padding - k) // stride + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"a {k}x{k} kernel does not fit {height}x{width} with padding {padding}")
    shape = torch.tensor([events.images, cin, height, width, cout, k, stride, padding, out_h,
                          out_w], dtype=torch.int64)
    return shape, (out_h, out_w)


def conv_forward(events: Events, weight_cl: Tensor, stride: int = 1, padding: int = 0) -> Tensor:
    """The convolution (no bias) of the spike train of ``events`` ``[images, C, H, W]`` with
    the channels-last weight ``weight_cl`` ``[C, k, k, C']``: ``[images, C', H', W']``. For
    ``[images, F]`` events and a ``[F, 1, 1, F']`` weight, the linear layer: ``[images, F']``."""
    shape, (out_h, out_w) = _geometry(events, weight_cl, stride, padding)
    cout = weight_cl.shape[-1]
    out_shape = ((events.images, cout, out_h, out_w) if len(events.image_shape) == 3
                 else (events.images, cout))
    out = torch.empty(out_shape, dtype=events.dtype)
    status = _library().event_forward(
        events.dtype == torch.float64, shape.data_ptr(), events.offsets.data_ptr(),
        events.positions.data_ptr(), events.scale, weight_cl.data_ptr(), out.data_ptr(),
        threads_for(_work(events, weight_cl, out.numel())))
    _check_status(status)
    return out


def conv_backward(events: Events, weight_cl: Tensor, grad: Tensor, stride: int = 1,
                  padding: int = 0, weight_grad: bool = True, input_grad: bool = True
                  ) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of :func:`conv_forward` from ``grad`` (its output's shape): the weight's,
    channels-last ``[C, k, k, C']``, and the input's ``[images, C, H, W]`` at the events only
    (0 elsewhere); None for one not asked for."""
    shape, (out_h, out_w) = _geometry(events, weight_cl, stride, padding)
    cout = weight_cl.shape[-1]
    expected = ((events.images, cout, out_h, out_w) if len(events.image_shape) == 3
                else (events.images, cout))
    if tuple(grad.shape) != expected or grad.dtype != events.dtype:
        raise ValueError(f"grad has shape {tuple(grad.shape)} and dtype {grad.dtype}, expected "
                         f"{expected} and {events.dtype}")
    grad = grad.contiguous()
    grad_weight = torch.empty_like(weight_cl) if weight_grad else None
    grad_input = (torch.empty((events.images, *events.image_shape), dtype=events.dtype)
                  if input_grad else None)
    status = _library().event_backward(
        events.dtype == torch.float64, shape.data_ptr(), events.offsets.data_ptr(),
        events.positions.data_ptr(), events.scale, weight_cl.data_ptr(), grad.data_ptr(),
        None if grad_weight is None else grad_weight.data_ptr(),
        None if grad_input is None else grad_input.data_ptr(),
        threads_for(_work(events, weight_cl, grad.numel())))
    _check_status(status)
    return grad_weight, grad_input


def _check_status(status: int) -> None:
    if status != 0:
        raise MemoryError("the event kernels could not allocate their scratch memory")
