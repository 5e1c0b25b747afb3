"""The ``triton`` backend: fused Triton kernels for the paper's neurons (:mod:`.triton_jit`).

A PyTorch scan launches a few elementwise kernels per time step; here one launch takes every
neuron of a layer through all steps of a chunk (the pooling neuron's average pool fused in, and
its gradient's spreading over the windows), so a training step launches the same number of
kernels whatever T is. The kernels compute every value with the float operations of the neurons'
own methods, in the same order (without fused multiply-adds), so both give identical bits.
Synapses are :mod:`.pytorch`'s, with the spikes packed in one launch; the Poisson input is
:mod:`.reference`'s.

The kernels run on CUDA tensors, and on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1`` before triton is first used; slow, for the tests). ``auto`` does not
take this backend yet: the kernels have not run on a GPU (``benchmarks/cuda_check.sh``).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor, nn

from . import pytorch
from .arguments import check_tensor, check_window, scan_arguments
from .pytorch import conv_backward, linear_backward
from .reference import poisson_encode

__all__ = ["conv_backward", "conv_forward", "describe", "integrator_forward", "linear_backward",
           "linear_forward", "neuron_backward", "neuron_forward", "pack_spikes", "poisson_encode",
           "pooling_backward", "pooling_forward", "unavailable"]

NAME = "triton"
DESCRIPTION = "fused Triton kernels, time-folded synapses"
NEURONS = frozenset({"lif", "if", "pooling", "integrator"})
DTYPES = frozenset({torch.float32, torch.float64})
STEP_BY_STEP = False

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


def unavailable(device: torch.device) -> str | None:
    """Why the kernels cannot run on tensors of ``device``, or None when they can."""
    module = _jit()
    if isinstance(module, str):
        return module
    if device.type == "cuda" or (device.type == "cpu" and module.INTERPRETED):
        return None
    if device.type == "cpu":
        return ("it runs on CUDA tensors, or on CPU tensors under Triton's interpreter "
                "(TRITON_INTERPRET=1 before triton is first used)")
    return f"it runs on CUDA tensors, not {device.type}"


def describe() -> str:
    return DESCRIPTION


@functools.lru_cache(maxsize=64)
def _constants(dtype: torch.dtype, device: torch.device, *values: float) -> Tensor:
    """``values`` in ``dtype`` on ``device``, made once: a Python float reaches a kernel as a
    float32 argument, and a float64 scan needs its threshold and leak in float64, exactly as
    PyTorch converts them. Each is filled in on the device: a copy from the host would wait."""
    return torch.cat([torch.full((1,), value, dtype=dtype, device=device) for value in values])


def launch(kernel: Callable, size: int, device: torch.device, *args, block: int = _BLOCK,
            **constexprs) -> None:
    """Run ``kernel`` over ``size`` items in blocks of ``block``, without fused multiply-adds
    (the neurons' methods round each product): the one place this backend launches a kernel
    (benchmarks/count_launches.py counts here)."""
    if size == 0:
        return
    grid = (-(-size // block),)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        kernel[grid](*args, BLOCK=block, enable_fp_fusion=False, **constexprs)


def neuron_forward(neuron: nn.Module, current: Tensor, membrane: Tensor,
                   stats: tuple[Tensor, ...], out: Tensor, kept: Tensor | None) -> Tensor:
    """As :func:`.reference.neuron_forward`, in one launch; ``membrane`` is updated in place."""
    if out is not current:
        out.copy_(current)
    threshold, leak, trace, count = scan_arguments(neuron, stats)
    for tensor, name in ((membrane, "membrane"), (trace, "trace"), (count, "count")):
        check_tensor(tensor, out.shape[1:], name, out.dtype)
    check_tensor(kept, out.shape, "spikes", torch.bool)
    constants = _constants(out.dtype, out.device, threshold, leak)
    neurons = membrane.numel()
    launch(_jit().lif_scan, neurons, out.device, out, out if kept is None else kept,
           membrane, membrane if trace is None else trace, membrane if count is None else count,
           constants, out.shape[0], neurons, HAS_SPIKES=kept is not None,
           HAS_SUMS=trace is not None)
    return membrane


def neuron_backward(neuron: nn.Module, grad_spikes: Tensor, kept: Tensor,
                    scale: Tensor | float, carry: Tensor) -> Tensor:
    """As :func:`.reference.neuron_backward`, in one launch; ``kept`` holds the bool spikes,
    ``scale`` is per neuron or one number."""
    step_shape = grad_spikes.shape[1:]
    check_tensor(kept, grad_spikes.shape, "spikes", torch.bool)
    check_tensor(carry, step_shape, "carry", grad_spikes.dtype)
    per_neuron = isinstance(scale, Tensor)
    if per_neuron:
        scale = scale.expand(step_shape).contiguous()
    else:
        scale = _constants(grad_spikes.dtype, grad_spikes.device, scale)
    out = torch.empty_like(grad_spikes)
    neurons = step_shape.numel()
    launch(_jit().gradient_scan, neurons, grad_spikes.device, grad_spikes, kept, scale, carry,
           out, grad_spikes.shape[0], neurons, SCALE_PER_NEURON=per_neuron)
    return out


def pooling_forward(neuron: nn.Module, spikes: Tensor, membrane: Tensor,
                    stats: tuple[Tensor, ...], kept: Tensor | None
                    ) -> tuple[Tensor, Tensor]:
    """As :func:`.reference.pooling_forward`: pool and scan in one launch."""
    k = neuron.kernel_size
    steps, *planes, height, width = spikes.shape
    rows, cols = height // k, width // k
    out = spikes.new_empty((steps, *planes, rows, cols))
    check_tensor(membrane, out.shape[1:], "membrane", spikes.dtype)
    check_tensor(kept, out.shape, "spikes", torch.bool)
    neurons = membrane.numel()
    launch(_jit().pooling_scan, neurons, spikes.device, spikes, out,
           out if kept is None else kept, membrane,
           _constants(spikes.dtype, spikes.device, neuron.threshold), steps, neurons,
           spikes[0].numel(), height, width, rows, cols, K=k, HAS_SPIKES=kept is not None)
    return out, membrane


def pooling_backward(neuron: nn.Module, grad_pooled: Tensor, kept: Tensor,
                     scale: Tensor | float, carry: Tensor, input_hw: tuple[int, int]
                     ) -> tuple[Tensor, Tensor]:
    """As :func:`.reference.pooling_backward`: the gradient scan and the average pool's
    gradient in one launch (the IF neuron's factor at a spike is 1)."""
    k = neuron.kernel_size
    steps, *planes, rows, cols = grad_pooled.shape
    height, width = input_hw
    check_window(k, (rows, cols), input_hw)
    check_tensor(kept, grad_pooled.shape, "spikes", torch.bool)
    check_tensor(carry, grad_pooled.shape[1:], "carry", grad_pooled.dtype)
    covered = height == rows * k and width == cols * k
    shape = (steps, *planes, height, width)
    image_grad = grad_pooled.new_empty(shape) if covered else grad_pooled.new_zeros(shape)
    first = torch.empty_like(carry)
    neurons = carry.numel()
    launch(_jit().pooling_gradient_scan, neurons, grad_pooled.device, grad_pooled, kept, carry,
           image_grad, first, steps, neurons, image_grad[0].numel(), height, width, rows, cols,
           K=k)
    return image_grad, first


def integrator_forward(neuron: nn.Module, current: Tensor, membrane: Tensor) -> Tensor:
    """As :func:`.reference.integrator_forward`, in one launch; ``membrane`` is updated in
    place."""
    check_tensor(membrane, current.shape[1:], "membrane", current.dtype)
    neurons = membrane.numel()
    launch(_jit().output_integrator, neurons, current.device, current, membrane,
           _constants(current.dtype, current.device, neuron.leak), current.shape[0], neurons)
    return membrane


def pack_spikes(x: Tensor, spike_train: bool = True) -> tuple[Tensor, Tensor | None]:
    """As :func:`.pytorch.pack_spikes`: ``(int8 codes, scale)`` with ``x == codes * scale`` if
    ``x`` holds only ``-c, 0, c`` for one finite c (``scale`` a 0-dim tensor of ``x.dtype`` on
    ``x.device``, NaN where it does not), for a declared spike train; else ``(x, None)``. One
    launch, and nothing read back to the host."""
    if not spike_train:
        return x, None
    codes = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    magnitudes = torch.full((2,), _INT64_MAX, dtype=torch.int64, device=x.device)
    magnitudes[0] = 0
    launch(_jit().pack_spikes, x.numel(), x.device, x, codes, magnitudes, x.numel(),
           block=_PACK_BLOCK)
    largest, smallest = magnitudes
    # the bits of |x| back to the float (exact for both dtypes)
    bits = magnitudes[:1] if x.dtype == torch.float64 else magnitudes[:1].to(torch.int32)
    scale = bits.view(x.dtype)[0]
    lossless = ((largest == 0) | (largest == smallest)) & scale.isfinite()
    return codes, torch.where(lossless, scale, torch.nan)


def conv_forward(spikes: Tensor, weight: Tensor, stride: tuple[int, int],
                 padding: tuple[int, int], *, cache: dict, recording: bool, weight_grad: bool,
                 spike_train: bool) -> tuple[Tensor, object, bool]:
    """:func:`.pytorch.conv_forward`, the spikes packed by :func:`pack_spikes`."""
    return pytorch.conv_forward(spikes, weight, stride, padding, cache=cache, recording=recording,
                                weight_grad=weight_grad, spike_train=spike_train,
                                pack=pack_spikes)


def linear_forward(spikes: Tensor, weight: Tensor, *, cache: dict, recording: bool,
                   weight_grad: bool, spike_train: bool) -> tuple[Tensor, object, bool]:
    """:func:`.pytorch.linear_forward`, the spikes packed by :func:`pack_spikes`."""
    return pytorch.linear_forward(spikes, weight, cache=cache, recording=recording,
                                  weight_grad=weight_grad, spike_train=spike_train,
                                  pack=pack_spikes)
