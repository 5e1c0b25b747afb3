"""The ``torch`` backend: PyTorch operations on any device.

Neurons run their own methods over a whole chunk of time steps (the loops of
:mod:`.reference`, with one autograd node per chunk instead of per step), so every neuron runs
here, the ones no fused kernel implements included. Synapses fold time into the batch
(``[T*B, ...]``): one convolution or matrix product over all T steps at once. For the backward
they keep their input as int8 codes when the layer declares it a spike train (values ``-c, 0, c``
for one constant c, e.g. dropout's ``1/(1-p)``), one byte per input and step instead of a float.

The ``cpu`` and ``triton`` backends use these synapses with their own packing kernels.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import (average_pool_backward, integrator_forward, neuron_backward,
                        neuron_forward, neuron_refusal, poisson_encode)

__all__ = ["average_pool", "average_pool_backward", "conv_backward", "conv_forward", "describe",
           "integrator_forward", "linear_backward", "linear_forward", "neuron_backward",
           "neuron_forward", "neuron_refusal", "pack_spikes", "packed_input", "poisson_encode",
           "unavailable", "unpack_spikes"]

NAME = "torch"
DESCRIPTION = "PyTorch loops over the steps of every neuron, time-folded synapses"
DTYPES = None
STEP_BY_STEP = False

Packed = tuple[Tensor, Tensor | None]  # (int8 codes, scale c), or (the float input, None)
Packer = Callable[[Tensor, bool], Packed]  # (input, declared a spike train?)


def unavailable(device: torch.device) -> str | None:
    """Runs anywhere."""
    return None


def describe() -> str:
    return DESCRIPTION


def average_pool(spikes: Tensor, kernel_size: int) -> Tensor:
    """``[T, B, C, H, W]`` -> ``[T, B, C, H // k, W // k]``: the window means of each image."""
    return F.avg_pool2d(spikes.flatten(0, 1), kernel_size).unflatten(0, spikes.shape[:2])


def pack_spikes(x: Tensor, spike_train: bool = True) -> Packed:
    """``(int8 codes, scale)`` with ``x == codes * scale`` for an ``x`` of only ``-c, 0, c``, if
    the layer declares its input a spike train; else ``(x, None)``.

    Decided on the host from the declaration, checked on the device: a host read of the data
    would make every synapse layer wait for the device. With ``c = max |x|`` and
    ``codes = trunc(x / c)``, a nonzero x becomes a nonzero code exactly when ``|x| = c``, so
    equal nonzero counts prove the packing lossless; where they differ (a false declaration)
    the scale is NaN, and so is every gradient that the codes give.
    """
    if not spike_train:
        return x, None
    low, high = torch.aminmax(x)
    scale = torch.maximum(high, -low)
    codes = (x / torch.where(scale == 0, 1, scale)).to(torch.int8)
    lossless = (torch.count_nonzero(codes) == torch.count_nonzero(x)) & scale.isfinite()
    return codes, torch.where(lossless, scale, torch.nan)


def unpack_spikes(packed: Packed, dtype: torch.dtype) -> Tensor:
    """Inverse of :func:`pack_spikes`, in ``dtype``."""
    codes, scale = packed
    if scale is None:
        return codes.to(dtype)
    return torch.mul(codes, scale.to(dtype))


def packed_input(spikes: Tensor, spike_train: bool, pack: Packer) -> Packed:
    """``pack(spikes, spike_train)``, or the packing an earlier synapse made of the same,
    unchanged tensor: a block's convolution and its shortcut read one input, and keep one copy
    of it for the backward."""
    earlier = getattr(spikes, "_spiking_packed", None)
    if earlier is not None and earlier[0] == (spikes._version, spike_train, pack):
        return earlier[1]
    packed = pack(spikes, spike_train)
    if packed[0] is not spikes:  # a kept float is shared anyway, and would hold itself
        spikes._spiking_packed = (spikes._version, spike_train, pack), packed
    return packed


def conv_forward(spikes: Tensor, weight: Tensor, stride: tuple[int, int],
                 padding: tuple[int, int], *, cache: dict, recording: bool, weight_grad: bool,
                 spike_train: bool, pack: Packer = pack_spikes
                 ) -> tuple[Tensor, Packed | None, bool]:
    """A bias-free convolution of ``spikes`` ``[T, B, C, H, W]``, time folded into the batch:
    ``(current [T, B, C', H', W'], the packed input if ``weight_grad``, False: dense)``."""
    saved = packed_input(spikes, spike_train, pack) if weight_grad else None
    current = F.conv2d(spikes.flatten(0, 1).to(weight.dtype), weight, None, stride, padding)
    return current.unflatten(0, spikes.shape[:2]), saved, False


def conv_backward(saved: Packed | None, weight: Tensor, grad_current: Tensor,
                  stride: tuple[int, int], padding: tuple[int, int], input_shape: torch.Size,
                  needs_input: bool, needs_weight: bool, sparse_input: bool
                  ) -> tuple[Tensor | None, Tensor | None]:
    """The gradients of :func:`conv_forward`: the input's ``[T, B, C, H, W]`` and the
    weight's, None for one not asked for."""
    if needs_weight:
        spikes = unpack_spikes(saved, grad_current.dtype)
    else:
        spikes = grad_current.new_empty(input_shape)
    grad_input, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad_current.flatten(0, 1), spikes.flatten(0, 1), weight, None, stride, padding, (1, 1),
        False, (0, 0), 1, (needs_input, needs_weight, False))
    if grad_input is not None:
        grad_input = grad_input.unflatten(0, input_shape[:2])
    return grad_input, grad_weight


def linear_forward(spikes: Tensor, weight: Tensor, *, cache: dict, recording: bool,
                   weight_grad: bool, spike_train: bool, pack: Packer = pack_spikes
                   ) -> tuple[Tensor, Packed | None, bool]:
    """A bias-free linear layer over ``spikes`` ``[T, B, F]``: as :func:`conv_forward`,
    ``[T, B, F']``."""
    saved = packed_input(spikes, spike_train, pack) if weight_grad else None
    return F.linear(spikes.to(weight.dtype), weight), saved, False


def linear_backward(saved: Packed | None, weight: Tensor, grad_current: Tensor,
                    input_shape: torch.Size, needs_input: bool, needs_weight: bool,
                    sparse_input: bool) -> tuple[Tensor | None, Tensor | None]:
    """The gradients of :func:`linear_forward`."""
    grad_input = grad_current @ weight if needs_input else None
    grad_weight = None
    if needs_weight:
        spikes = unpack_spikes(saved, grad_current.dtype)
        grad_weight = grad_current.flatten(0, -2).T @ spikes.flatten(0, -2)
    return grad_input, grad_weight
