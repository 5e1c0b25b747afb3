"""Synapse layers over spike trains: convolution and linear layers without bias,
``[T, B, ...] -> [T, B, ...]``.

A layer gets the kernel table of the chosen backend once per call (:func:`spiking.backends.select`)
and runs its synapse kernels: the forward returns the current and what the backward needs (int8
codes of the input spikes on the ``torch`` backend, the spikes' positions where the ``cpu``
backend runs event-driven); the backward gives the input's and the weight's gradients from it.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import backends
from .backends.contract import KernelTable
from .functional import records_graph

__all__ = ["SpikingConv2d", "SpikingLinear", "TimeFolded"]


class _Synapse(torch.autograd.Function):
    """A synapse layer's kernels under autograd: ``(spikes, weight) -> current``."""

    @staticmethod
    def forward(ctx, spikes: Tensor, weight: Tensor, layer: _SynapseLayer,
                kernels: KernelTable) -> Tensor:
        current, saved, event_driven = layer.run_forward(kernels, spikes, weight, recording=True,
                                                         weight_grad=ctx.needs_input_grad[1])
        layer.count_chunk(event_driven)
        ctx.layer, ctx.kernels, ctx.saved, ctx.input_shape = layer, kernels, saved, spikes.shape
        ctx.save_for_backward(weight)
        # detach() drops the view relation to the kernel's folded result: autograd forbids
        # in-place writes to views made inside a custom Function, and the LIF neuron writes its
        # spikes over this current.
        return current.detach()

    @staticmethod
    def backward(ctx, grad_current: Tensor) -> tuple[Any, ...]:
        (weight,) = ctx.saved_tensors
        grad_spikes, grad_weight = ctx.layer.run_backward(
            ctx.kernels, ctx.saved, weight, grad_current.contiguous(), ctx.input_shape,
            *ctx.needs_input_grad[:2])
        return grad_spikes, grad_weight, None, None


def _autocast_weight(spikes: Tensor, weight: Tensor) -> Tensor:
    """Under autocast, the weight in its dtype; its cast carries the gradient back to float32.
    The spikes are cast inside the kernels (exactly: they are -c, 0 or c), after being packed
    from their float32 values."""
    device = spikes.device.type
    if torch.is_autocast_enabled(device):
        return weight.to(torch.get_autocast_dtype(device))
    return weight


class _SynapseLayer:
    """What the two synapse layers share: running their kernels, the declared nature of their
    input, and counts of the chunks that ran event-driven and dense (what tests and the
    benchmark check)."""

    weight: nn.Parameter
    input_from_neurons: bool
    input_spikes: bool
    event_chunks: int
    dense_chunks: int

    def _init_synapse(self, input_from_neurons: bool, input_spikes: bool) -> None:
        self.input_from_neurons = input_from_neurons
        self.input_spikes = input_spikes
        self.event_chunks = self.dense_chunks = 0
        self.kernel_cache: dict = {}  # the backend's per-layer data, e.g. a re-laid weight

    def run_forward(self, kernels: KernelTable, spikes: Tensor, weight: Tensor, recording: bool,
                    weight_grad: bool) -> tuple[Tensor, object, bool]:
        """The table's forward kernel: ``(current, what the backward needs, event-driven?)``."""
        raise NotImplementedError

    def run_backward(self, kernels: KernelTable, saved: object, weight: Tensor, grad: Tensor,
                     input_shape: torch.Size, needs_input: bool, needs_weight: bool
                     ) -> tuple[Tensor | None, Tensor | None]:
        """The table's backward kernel: the gradients of the input and the weight."""
        raise NotImplementedError

    def count_chunk(self, event_driven: bool) -> None:
        if event_driven:
            self.event_chunks += 1
        else:
            self.dense_chunks += 1

    def synapse_forward(self, spikes: Tensor) -> Tensor:
        spikes = spikes.contiguous()
        weight = _autocast_weight(spikes, self.weight)
        # the spikes choose: a weight cast by autocast only keeps the events off (cpu backend)
        kernels = backends.select(spikes)
        if records_graph(spikes, weight):
            return _Synapse.apply(spikes, weight, self, kernels)
        current, _, event_driven = self.run_forward(kernels, spikes, weight, recording=False,
                                                    weight_grad=False)
        self.count_chunk(event_driven)
        return current

    def __getstate__(self) -> dict:
        state = super().__getstate__()  # nn.Module's
        return {**state, "kernel_cache": {}}  # may hold weak references, which do not pickle


class SpikingConv2d(_SynapseLayer, nn.Conv2d):
    """``nn.Conv2d`` without bias over a spike train: ``[T, B, C, H, W] -> [T, B, C', H', W']``.

    Its ``weight`` is the authors' parameter, so state_dict keys stay ``<name>.weight``.

    Args:
        input_from_neurons: the input is the spike output of a layer of spiking neurons (or of
            dropout over one), which reads its gradient only at its spikes (docs/algorithm.md,
            *Hidden LIF neuron*): an event-driven backward may then leave the input gradient 0
            where the input did not spike. The network builder declares it; False (the default)
            always gives the full input gradient.
        input_spikes: the input holds only ``-c, 0, c`` for one c (spikes, dropout's scaled
            spikes, the signed Poisson code): the backward keeps it as int8 codes, decided
            without reading the data back from the device (a false declaration gives NaN weight
            gradients). False (the default) keeps the float input, except where the ``cpu``
            backend finds it packable.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: int = 0, input_from_neurons: bool = False,
                 input_spikes: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self._init_synapse(input_from_neurons, input_spikes)

    def run_forward(self, kernels: KernelTable, spikes: Tensor, weight: Tensor, recording: bool,
                    weight_grad: bool) -> tuple[Tensor, object, bool]:
        return kernels.conv_forward(spikes, weight, self.stride, self.padding,
                                    cache=self.kernel_cache, recording=recording,
                                    weight_grad=weight_grad, spike_train=self.input_spikes)

    def run_backward(self, kernels: KernelTable, saved: object, weight: Tensor, grad: Tensor,
                     input_shape: torch.Size, needs_input: bool, needs_weight: bool
                     ) -> tuple[Tensor | None, Tensor | None]:
        return kernels.conv_backward(saved, weight, grad, self.stride, self.padding, input_shape,
                                     needs_input, needs_weight, self.input_from_neurons)

    def forward(self, spikes: Tensor) -> Tensor:
        return self.synapse_forward(spikes)


class SpikingLinear(_SynapseLayer, nn.Linear):
    """``nn.Linear`` without bias over a spike train: ``[T, B, F] -> [T, B, F']``.

    Args:
        input_from_neurons, input_spikes: as for :class:`SpikingConv2d`.
    """

    def __init__(self, in_features: int, out_features: int, input_from_neurons: bool = False,
                 input_spikes: bool = False) -> None:
        super().__init__(in_features, out_features, bias=False)
        self._init_synapse(input_from_neurons, input_spikes)

    def run_forward(self, kernels: KernelTable, spikes: Tensor, weight: Tensor, recording: bool,
                    weight_grad: bool) -> tuple[Tensor, object, bool]:
        return kernels.linear_forward(spikes, weight, cache=self.kernel_cache,
                                      recording=recording, weight_grad=weight_grad,
                                      spike_train=self.input_spikes)

    def run_backward(self, kernels: KernelTable, saved: object, weight: Tensor, grad: Tensor,
                     input_shape: torch.Size, needs_input: bool, needs_weight: bool
                     ) -> tuple[Tensor | None, Tensor | None]:
        return kernels.linear_backward(saved, weight, grad, input_shape, needs_input,
                                       needs_weight, self.input_from_neurons)

    def forward(self, spikes: Tensor) -> Tensor:
        return self.synapse_forward(spikes)


def _single_pixel_stride(module: nn.Module) -> int | None:
    """The stride of an ``nn.AvgPool2d`` whose windows are single pixels (ResNet's 1x1 stride-2
    shortcut), or None for any other module."""
    if not isinstance(module, nn.AvgPool2d) or module.divisor_override not in (None, 1):
        return None
    square = {_pair(module.kernel_size), _pair(module.padding)} == {(1, 1), (0, 0)}
    stride = _pair(module.stride)
    return stride[0] if square and stride[0] == stride[1] and not module.ceil_mode else None


def _pair(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


class TimeFolded(nn.Module):
    """Apply a stateless per-image module (an ``nn.AvgPool2d``) to each step of ``[T, B, ...]``.

    The mean of a one-pixel window is that pixel: such a pool runs as a strided slice, the same
    numbers, which keeps nothing for the backward (``avg_pool2d`` keeps its whole input).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        stride = _single_pixel_stride(self.module)
        if stride is not None:
            return x[..., ::stride, ::stride]
        return self.module(x.flatten(0, 1)).unflatten(0, x.shape[:2])
