"""Time-folded synapses: one convolution or matrix product over all T steps at once.

The layers take spike trains ``[T, B, ...]``, fold time into the batch (``[T*B, ...]``), apply the
weights once and unfold. For autograd they keep their input as a compact integer tensor whenever it
is a spike train (values ``-c, 0, c`` for one constant c, e.g. dropout's ``1/(1-p)``), so BPTT over
100 steps stores one byte per synapse input and step instead of a float.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import reference
from .functional import _fused_kernels, _needs_graph

__all__ = ["SpikingConv2d", "SpikingLinear", "TimeFolded", "compact_spikes", "expand_spikes"]


def compact_spikes(x: Tensor) -> tuple[Tensor, Tensor | None]:
    """Pack ``x`` as ``(int8 codes, scale)`` if it only holds ``-c, 0, c``; else ``(x, None)``.

    With ``c = max |x|`` and ``codes = trunc(x / c)``, a nonzero x becomes a nonzero code exactly
    when ``|x| = c``, so equal nonzero counts prove the packing lossless. Costs a few passes over
    ``x`` (one, with the fused CPU kernel), far cheaper than the float copy autograd would
    otherwise keep until backward.
    """
    kernels = _fused_kernels(x)
    if kernels is not None:
        packed = kernels.pack_spikes(x)
        return packed if packed is not None else (x, None)
    low, high = torch.aminmax(x)
    scale = torch.maximum(high, -low)
    if scale == 0:
        return torch.zeros_like(x, dtype=torch.int8), scale
    codes = (x if scale == 1 else x / scale).to(torch.int8)
    if torch.count_nonzero(codes) == torch.count_nonzero(x):
        return codes, scale
    return x, None


def expand_spikes(packed: Tensor, scale: Tensor | None, dtype: torch.dtype) -> Tensor:
    """Inverse of :func:`compact_spikes`, in ``dtype``."""
    if scale is None:
        return packed.to(dtype)
    return packed.to(dtype) if scale == 1 else torch.mul(packed, scale.to(dtype))


class _SpikeInputConv2d(torch.autograd.Function):
    """Time-folded convolution ``[T, B, C, H, W] -> [T, B, C', H', W']`` keeping packed spikes."""

    @staticmethod
    def forward(ctx, spikes: Tensor, weight: Tensor, stride: tuple, padding: tuple) -> Tensor:
        ctx.conv_args = (stride, padding)
        ctx.input_shape = spikes.shape
        if ctx.needs_input_grad[1]:
            ctx.packed_input = compact_spikes(spikes)
        ctx.save_for_backward(weight)
        current = F.conv2d(spikes.flatten(0, 1).to(weight.dtype), weight, None, stride, padding)
        # detach() drops the view relation to the folded result: autograd forbids in-place
        # writes to views made inside a custom Function, and the LIF neuron writes its spikes
        # over this current.
        return current.unflatten(0, spikes.shape[:2]).detach()

    @staticmethod
    def backward(ctx, grad_current: Tensor):
        (weight,) = ctx.saved_tensors
        stride, padding = ctx.conv_args
        if ctx.needs_input_grad[1]:
            spikes = expand_spikes(*ctx.packed_input, grad_current.dtype)
        else:
            spikes = grad_current.new_empty(ctx.input_shape)
        grad_spikes, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad_current.flatten(0, 1), spikes.flatten(0, 1), weight, None, stride, padding,
            (1, 1), False, (0, 0), 1, (ctx.needs_input_grad[0], ctx.needs_input_grad[1], False))
        if grad_spikes is not None:
            grad_spikes = grad_spikes.unflatten(0, ctx.input_shape[:2])
        return grad_spikes, grad_weight, None, None


class _SpikeInputLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        if ctx.needs_input_grad[1]:
            ctx.packed_input = compact_spikes(x)
        ctx.save_for_backward(weight)
        return F.linear(x.to(weight.dtype), weight)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (weight,) = ctx.saved_tensors
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            x = expand_spikes(*ctx.packed_input, grad_out.dtype)
            grad_w = grad_out.flatten(0, -2).T @ x.flatten(0, -2)
        return grad_x, grad_w


def _autocast_weight(spikes: Tensor, weight: Tensor) -> Tensor:
    """Under autocast, the weight in its dtype; its cast carries the gradient back to float32.
    The spikes are cast inside the layer's Function (exactly: they are -c, 0 or c), after
    being packed from their float32 values."""
    device = spikes.device.type
    if torch.is_autocast_enabled(device):
        return weight.to(torch.get_autocast_dtype(device))
    return weight


class SpikingConv2d(nn.Conv2d):
    """``nn.Conv2d`` without bias over a spike train: ``[T, B, C, H, W] -> [T, B, C', H', W']``.

    Its ``weight`` is the authors' parameter, so state_dict keys stay ``<name>.weight``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: int = 0) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=False)

    def forward(self, spikes: Tensor) -> Tensor:
        if reference.chosen(spikes):
            return reference.conv2d(spikes, self.weight, self.stride, self.padding)
        weight = _autocast_weight(spikes, self.weight)
        if _needs_graph(spikes, weight):
            return _SpikeInputConv2d.apply(spikes, weight, self.stride, self.padding)
        current = F.conv2d(spikes.flatten(0, 1).to(weight.dtype), weight, None, self.stride,
                           self.padding)
        return current.unflatten(0, spikes.shape[:2])


class SpikingLinear(nn.Linear):
    """``nn.Linear`` without bias over a spike train: ``[T, B, F] -> [T, B, F']``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def forward(self, spikes: Tensor) -> Tensor:
        if reference.chosen(spikes):
            return reference.linear(spikes, self.weight)
        weight = _autocast_weight(spikes, self.weight)
        if _needs_graph(spikes, weight):
            return _SpikeInputLinear.apply(spikes, weight)
        return F.linear(spikes.to(weight.dtype), weight)


class TimeFolded(nn.Module):
    """Apply a stateless per-image module (an ``nn.AvgPool2d``) to each step of ``[T, B, ...]``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x.flatten(0, 1)).unflatten(0, x.shape[:2])
