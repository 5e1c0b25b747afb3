"""Time-folded synapses: one convolution or matrix product over all T steps at once.

The layers take spike trains ``[T, B, ...]``, fold time into the batch (``[T*B, ...]``), apply the
weights once and unfold. For autograd they keep their input as a compact integer tensor whenever it
is a spike train (values ``-c, 0, c`` for one constant c, e.g. dropout's ``1/(1-p)``), so BPTT over
100 steps stores one byte per synapse input and step instead of a float.

Under the ``cpu`` backend (:mod:`spiking.backend`) a layer whose input in a chunk is a spike train
no denser than :data:`spiking.backend.EVENT_DENSITY_MAX` runs event-driven
(:mod:`spiking.event_kernels`): its forward and weight gradient cost a weight column per input
spike, and it keeps the spikes' positions (4 bytes per spike) for the backward. Its input gradient
is computed only at the input's spikes, 0 elsewhere, when the layer's input is declared to come
from spiking neurons (:attr:`SpikingConv2d.input_from_neurons`); otherwise it is the dense one.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import backend, cpu_kernels, event_kernels, reference
from .event_kernels import Events
from .functional import _fused_kernels, _needs_graph

__all__ = ["SpikingConv2d", "SpikingLinear", "TimeFolded", "compact_spikes", "expand_spikes",
           "spike_events"]


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


def spike_events(x: Tensor, weight: Tensor) -> Events | None:
    """The events of ``x`` ``[T, B, ...]`` (folded to ``[T*B, ...]``) if the event-driven
    kernels should run on it, else None: the ``cpu`` backend runs, ``x`` and ``weight`` are
    contiguous CPU tensors of one float dtype (no autocast), and ``x`` is a spike train with at
    most :func:`spiking.backend.event_density_max` of its entries nonzero (for a convolution's
    ``weight`` ``[C', C, k, k]`` or a linear layer's ``[F', F]``)."""
    if (x.dtype != weight.dtype or x.dim() != weight.dim() + 1 or not x.is_contiguous()
            or not cpu_kernels.usable(x, weight) or not event_kernels.available()):
        return None
    folded = x.detach().flatten(0, 1)
    if folded.shape[0] == 0 or folded[0].numel() == 0:
        return None
    density_max = backend.event_density_max("conv" if weight.dim() == 4 else "linear")
    if density_max <= 0:
        return None
    return event_kernels.find_events(folded, int(density_max * folded.numel()))


def _channels_last(weight: Tensor) -> Tensor:
    """``[C', C, k, k]`` (or ``[F', F]``) -> ``[C, k, k, C']`` (``[F, 1, 1, F']``): the layout
    in which the event kernels read a weight column per input event."""
    if weight.dim() == 2:
        return weight.t().contiguous().unsqueeze(1).unsqueeze(1)
    return weight.permute(1, 2, 3, 0).contiguous()


def _from_channels_last(grad: Tensor, like: Tensor) -> Tensor:
    if like.dim() == 2:
        return grad.flatten(1).t()
    return grad.permute(3, 0, 1, 2)


class _EventSynapse(torch.autograd.Function):
    """A convolution (or linear layer: 1x1, 1 pixel) over the events of a spike train
    ``[T, B, ...]``. Inputs ``(spikes, weight, weight_cl, events, stride, padding,
    sparse_input_grad)``, ``weight_cl`` being ``weight`` re-laid by :func:`_channels_last`."""

    @staticmethod
    def forward(ctx, spikes: Tensor, weight: Tensor, weight_cl: Tensor, events: Events,
                stride: int, padding: int, sparse_input_grad: bool) -> Tensor:
        ctx.events, ctx.geometry = events, (stride, padding)
        ctx.input_shape, ctx.sparse_input_grad = spikes.shape, sparse_input_grad
        ctx.save_for_backward(weight, weight_cl)
        current = event_kernels.conv_forward(events, weight_cl, stride, padding)
        return current.unflatten(0, spikes.shape[:2]).detach()  # see _SpikeInputConv2d

    @staticmethod
    def backward(ctx, grad_current: Tensor):
        weight, weight_cl = ctx.saved_tensors
        stride, padding = ctx.geometry
        needs_input, needs_weight = ctx.needs_input_grad[:2]
        sparse_input = needs_input and ctx.sparse_input_grad
        grad = grad_current.flatten(0, 1)
        grad_weight, grad_spikes = event_kernels.conv_backward(
            ctx.events, weight_cl, grad, stride, padding, needs_weight, sparse_input)
        if grad_weight is not None:
            grad_weight = _from_channels_last(grad_weight, weight)
        if needs_input and not sparse_input:  # the dense input gradient, without the input
            if weight.dim() == 2:
                grad_spikes = grad @ weight
            else:
                grad_spikes = torch.ops.aten.convolution_backward(
                    grad, grad.new_empty((grad.shape[0], *ctx.input_shape[2:])), weight, None,
                    (stride, stride), (padding, padding), (1, 1), False, (0, 0), 1,
                    (True, False, False))[0]
        if grad_spikes is not None:
            grad_spikes = grad_spikes.unflatten(0, ctx.input_shape[:2])
        return grad_spikes, grad_weight, None, None, None, None, None


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


class _EventDriven:
    """What the two synapse layers share: the declared nature of their input, and counts of
    the chunks each path ran (what tests and the benchmark check)."""

    input_from_neurons: bool
    event_chunks: int
    dense_chunks: int

    def _init_event_driven(self, input_from_neurons: bool) -> None:
        self.input_from_neurons = input_from_neurons
        self.event_chunks = self.dense_chunks = 0
        self._relaid: tuple[weakref.ref, int, Tensor] | None = None

    def _weight_channels_last(self, weight: Tensor) -> Tensor:
        """``weight`` re-laid for the event kernels, once per weight update rather than per
        chunk (LeNet's fc0: a 2 MB copy)."""
        if self._relaid is not None:
            source, version, relaid = self._relaid
            if source() is weight and version == weight._version:
                return relaid
        relaid = _channels_last(weight.detach())
        self._relaid = (weakref.ref(weight), weight._version, relaid)
        return relaid

    def _events(self, spikes: Tensor, weight: Tensor) -> Events | None:
        events = spike_events(spikes, weight) if self._event_geometry() else None
        if events is None:
            self.dense_chunks += 1
        else:
            self.event_chunks += 1
        return events

    def _event_geometry(self) -> bool:
        return True

    def __getstate__(self) -> dict:
        state = super().__getstate__()  # nn.Module's
        return {**state, "_relaid": None}  # a weak reference does not pickle


class SpikingConv2d(_EventDriven, nn.Conv2d):
    """``nn.Conv2d`` without bias over a spike train: ``[T, B, C, H, W] -> [T, B, C', H', W']``.

    Its ``weight`` is the authors' parameter, so state_dict keys stay ``<name>.weight``.

    Args:
        input_from_neurons: the input is the spike output of a layer of spiking neurons (or of
            dropout over one), which reads its gradient only at its spikes (docs/algorithm.md,
            *Hidden LIF neuron*): the event-driven backward may then leave the input gradient 0
            where the input did not spike. The network builder declares it; False (the default)
            always gives the full input gradient.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: int = 0, input_from_neurons: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self._init_event_driven(input_from_neurons)

    def _event_geometry(self) -> bool:
        return (len(set(self.kernel_size)) == len(set(self.stride)) == 1
                and isinstance(self.padding, tuple) and len(set(self.padding)) == 1
                and self.dilation == (1, 1) and self.groups == 1)

    def forward(self, spikes: Tensor) -> Tensor:
        if reference.chosen(spikes):
            return reference.conv2d(spikes, self.weight, self.stride, self.padding)
        weight = _autocast_weight(spikes, self.weight)
        events = self._events(spikes, weight)
        if events is not None:
            stride, padding = self.stride[0], self.padding[0]
            weight_cl = self._weight_channels_last(weight)
            if _needs_graph(spikes, weight):
                return _EventSynapse.apply(spikes, weight, weight_cl, events, stride, padding,
                                           self.input_from_neurons)
            current = event_kernels.conv_forward(events, weight_cl, stride, padding)
            return current.unflatten(0, spikes.shape[:2])
        if _needs_graph(spikes, weight):
            return _SpikeInputConv2d.apply(spikes, weight, self.stride, self.padding)
        current = F.conv2d(spikes.flatten(0, 1).to(weight.dtype), weight, None, self.stride,
                           self.padding)
        return current.unflatten(0, spikes.shape[:2])


class SpikingLinear(_EventDriven, nn.Linear):
    """``nn.Linear`` without bias over a spike train: ``[T, B, F] -> [T, B, F']``.

    Args:
        input_from_neurons: as for :class:`SpikingConv2d`.
    """

    def __init__(self, in_features: int, out_features: int,
                 input_from_neurons: bool = False) -> None:
        super().__init__(in_features, out_features, bias=False)
        self._init_event_driven(input_from_neurons)

    def forward(self, spikes: Tensor) -> Tensor:
        if reference.chosen(spikes):
            return reference.linear(spikes, self.weight)
        weight = _autocast_weight(spikes, self.weight)
        events = self._events(spikes, weight)
        if events is not None:
            weight_cl = self._weight_channels_last(weight)
            if _needs_graph(spikes, weight):
                return _EventSynapse.apply(spikes, weight, weight_cl, events, 1, 0,
                                           self.input_from_neurons)
            return event_kernels.conv_forward(events, weight_cl).unflatten(0, spikes.shape[:2])
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
