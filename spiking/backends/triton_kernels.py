"""The ``triton`` backend: Triton scans generated from each neuron's methods (:mod:`.codegen`).

A PyTorch scan launches a few elementwise kernels per time step; here one launch takes every
neuron of a layer through all steps of a chunk, so a training step launches the same number of
kernels whatever T is. The scans compute every value with the float operations of the neurons'
own methods, in the same order (without fused multiply-adds), so both give identical bits.
Synapses are :mod:`.pytorch`'s, with the spikes packed in one launch (:mod:`.triton_jit`); the
Poisson input is :mod:`.reference`'s.

The kernels run on CUDA tensors, and on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1`` before triton is first used; slow, for the tests). ``auto`` does not
take this backend yet: the kernels have not run on a GPU (``benchmarks/cuda_check.sh``).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor, nn

from . import codegen, cpu_kernels, pytorch
from .codegen import neuron_refusal
from .pytorch import average_pool, conv_backward, linear_backward
from .reference import average_pool_backward, poisson_encode

__all__ = ["average_pool", "average_pool_backward", "conv_backward", "conv_forward", "describe",
           "integrator_forward", "launch", "linear_backward", "linear_forward", "neuron_backward",
           "neuron_forward", "neuron_refusal", "pack_spikes", "poisson_encode", "unavailable"]

NAME = "triton"
DESCRIPTION = "fused Triton kernels, time-folded synapses"
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


def _module(scan: codegen.NeuronScan) -> ModuleType:
    """``scan``'s kernels as a Triton module: its source written once to the kernel cache (a
    ``triton.jit`` function needs a file), imported once per process."""
    module = scan.compiled.get(NAME)
    if module is None:
        source = codegen.triton_source(list(scan.kernels.values()), scan.dtype, "scan")
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        path = cpu_kernels.cache_dir() / f"triton-{scan.name}-{digest}.py"
        if not path.exists():
            cpu_kernels.write_atomically(path, source)
        spec = importlib.util.spec_from_file_location(f"spiking_scan_{digest}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        scan.compiled[NAME] = module
    return module


def _launch(scan: codegen.NeuronScan, kernel: codegen.Kernel, arrays: dict[str, Tensor],
            steps: int, neurons: int) -> None:
    device = arrays[kernel.array_names[0]].device
    constants = _constants(scan.dtype, device, *kernel.program.constants.values(), 0.0)
    launch(getattr(_module(scan), f"scan_{kernel.name}"), neurons, device, constants,
           *(arrays[name] for name in kernel.array_names), steps, neurons)


def neuron_forward(neuron: nn.Module, current: Tensor, membrane: Tensor,
                   stats: tuple[Tensor, ...], out: Tensor, record: bool
                   ) -> tuple[Tensor, codegen.FusedRecord | None]:
    """As :func:`.reference.neuron_forward`, in one launch of the Triton scan generated from
    the neuron's methods; ``membrane`` is updated in place."""
    return codegen.scan_forward(_launch, neuron, current, membrane, stats, out, record)


def neuron_backward(neuron: nn.Module, saved: codegen.FusedRecord, grad_spikes: Tensor,
                    scale: Tensor | float, carry: Tensor
                    ) -> tuple[Tensor, tuple[Tensor | None, ...]]:
    """As :func:`.reference.neuron_backward`, in one launch of the generated gradient scan."""
    return codegen.scan_backward(_launch, neuron, saved, grad_spikes, scale, carry)


def integrator_forward(neuron: nn.Module, current: Tensor, membrane: Tensor) -> Tensor:
    """As :func:`.reference.integrator_forward`, in one launch; ``membrane`` is updated in
    place."""
    return codegen.integrate(_launch, neuron, current, membrane)


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
