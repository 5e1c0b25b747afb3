"""The readable reference: the algorithm one time step at a time (docs/algorithm.md).

Each neuron is a pure step function of a few lines, one equation a line, and a custom autograd
Function per step whose backward is the authors' approximate gradient. The sequence functions
loop over the steps of ``[T, B, ...]`` tensors and take the same arguments as
:mod:`spiking.functional`'s ``lif_neuron``, ``if_neuron``, ``pooling_neuron`` and
``output_integrator``, continuing from a :class:`~spiking.functional.NeuronState` so that chunks
of time steps work. Autograd records every step, so this is the slowest implementation and the
one every other is tested against: choose it with ``SPIKING_BACKEND=reference`` or
``spiking.backend.use_backend("reference")``.

Notation (docs/algorithm.md): ``I_t`` input current, ``u_t`` membrane before the threshold,
``s_t`` spike, ``r_t`` membrane after the reset, ``m_t`` membrane after the leak, ``theta`` the
threshold, ``l`` the leak, ``g_t = dLoss/ds_t``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import functional
from .backend import backend_for

__all__ = [
    "chosen",
    "lif_forward_step",
    "lif_backward_step",
    "leak_correction",
    "LIFStep",
    "IFStep",
    "OutputStep",
    "lif_step",
    "if_step",
    "pooling_step",
    "output_step",
    "lif_neuron",
    "if_neuron",
    "pooling_neuron",
    "output_integrator",
    "conv2d",
    "linear",
]


def chosen(x: Tensor) -> bool:
    """Whether :mod:`spiking.backend` runs the layers of tensors like ``x`` with this module."""
    return backend_for(x.device) == "reference"


def lif_forward_step(current: Tensor, membrane: Tensor, threshold: float,
                     leak: float) -> tuple[Tensor, Tensor]:
    """One step of integrate, fire, reset and leak: ``(I_t, m_{t-1}) -> (s_t, m_t)``, ``[B, ...]``.

    With ``leak = 1`` this is the non-leaky IF neuron of the pooling layers.
    """
    u = membrane + current                      # u_t = m_{t-1} + I_t
    spikes = (u > threshold).to(u.dtype)        # s_t = [u_t > theta], strict
    reset = torch.where(spikes.bool(), 0.0, u)  # r_t = 0 where s_t = 1, else u_t
    return spikes, leak * reset                 # m_t = l * r_t


def lif_backward_step(grad_spikes: Tensor, grad_membrane: Tensor, spikes: Tensor,
                      spike_scale: Tensor | float) -> Tensor:
    """One step of the authors' backward: ``dLoss/du_t`` from ``g_t`` and ``dLoss/dm_t``.

    At a spike the current is credited with ``spike_scale * g_t`` (``NG / theta`` for the LIF
    neuron, 1 for the IF neuron) and the reset cuts the membrane's path; elsewhere the gradient
    of the membrane at the next step passes straight through the leak (``dm_t/dr_t`` taken as
    1). Since ``u_t = m_{t-1} + I_t``, the result is both ``dLoss/dI_t`` and ``dLoss/dm_{t-1}``.
    """
    return torch.where(spikes.bool(), spike_scale * grad_spikes, grad_membrane)


def leak_correction(trace: Tensor, count: Tensor, leak: float) -> Tensor:
    """NG from the sums over a neuron's whole spike train, ``LF = sum_t l^(T-1-t) s_t`` and
    ``N = sum_t s_t``: ``NG = [LF > 1e-3] + ln(l) * LF / (N + [N < 1e-3])``, 0 for a neuron
    that never fired."""
    fired = (trace > 1e-3).to(trace.dtype)
    silent = (count < 1e-3).to(count.dtype)
    return fired + math.log(leak) * trace / (count + silent)


class LIFStep(torch.autograd.Function):
    """One step of hidden LIF neurons: ``(I_t, m_{t-1}) -> (s_t, m_t)`` with the NG backward.

    ``sums`` is the layer's :class:`~spiking.functional.LeakSums`; its ``trace`` and ``count``
    (LF and N) are read when the backward runs, after the forward has seen every step, so NG is
    that of the whole train, as in the authors' scripts.
    """

    @staticmethod
    def forward(ctx, current: Tensor, membrane: Tensor, threshold: float, leak: float,
                sums: functional.LeakSums) -> tuple[Tensor, Tensor]:
        spikes, membrane = lif_forward_step(current, membrane, threshold, leak)
        ctx.save_for_backward(spikes)
        ctx.threshold, ctx.leak, ctx.sums = threshold, leak, sums
        return spikes, membrane

    @staticmethod
    def backward(ctx, grad_spikes: Tensor, grad_membrane: Tensor):
        (spikes,) = ctx.saved_tensors
        ng = leak_correction(ctx.sums.trace, ctx.sums.count, ctx.leak)
        grad_u = lif_backward_step(grad_spikes, grad_membrane, spikes, ng / ctx.threshold)
        return grad_u, grad_u, None, None, None


class IFStep(torch.autograd.Function):
    """One step of non-leaky IF neurons (the pooling layers): as :class:`LIFStep` with
    ``l = 1``, and a backward without NG or ``1/theta``."""

    @staticmethod
    def forward(ctx, current: Tensor, membrane: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
        spikes, membrane = lif_forward_step(current, membrane, threshold, 1.0)
        ctx.save_for_backward(spikes)
        return spikes, membrane

    @staticmethod
    def backward(ctx, grad_spikes: Tensor, grad_membrane: Tensor):
        (spikes,) = ctx.saved_tensors
        grad_u = lif_backward_step(grad_spikes, grad_membrane, spikes, 1.0)
        return grad_u, grad_u, None


class OutputStep(torch.autograd.Function):
    """One step of the output integrator, ``M_t = l * (M_{t-1} + I_t)``, with the leak
    straight-through for the gradient: both ``M_{t-1}`` and ``I_t`` receive ``dLoss/dM_t``."""

    @staticmethod
    def forward(ctx, current: Tensor, membrane: Tensor, leak: float) -> Tensor:
        return leak * (membrane + current)

    @staticmethod
    def backward(ctx, grad_membrane: Tensor):
        return grad_membrane, grad_membrane, None


def _start(state: functional.NeuronState, current: Tensor) -> Tensor:
    """The ``[B, ...]`` membrane ``m_{-1}`` to continue from: 0 before the first step."""
    return state.start(current.shape, current)


def lif_step(current: Tensor, state: functional.NeuronState, threshold: float,
             leak: float) -> Tensor:
    """Hidden LIF neurons at one step: ``I_t`` ``[B, ...]`` -> ``s_t``; updates ``state``
    (membrane, and the sums LF and N the backward's NG is computed from)."""
    membrane = _start(state, current)
    sums = state.leak_sums(membrane)
    spikes, state.membrane = LIFStep.apply(current, membrane, threshold, leak, sums)
    sums.trace = leak * sums.trace + spikes.detach()  # LF <- l * LF + s_t
    sums.count = sums.count + spikes.detach()         # N <- N + s_t
    return spikes


def if_step(current: Tensor, state: functional.NeuronState, threshold: float) -> Tensor:
    """Non-leaky IF neurons at one step: ``I_t`` ``[B, ...]`` -> ``s_t``; updates ``state``."""
    spikes, state.membrane = IFStep.apply(current, _start(state, current), threshold)
    return spikes


def pooling_step(spikes: Tensor, state: functional.NeuronState, threshold: float,
                 kernel_size: int) -> Tensor:
    """Spatial-pooling neurons at one step: ``[B, C, H, W]`` spikes -> ``[B, C, H/k, W/k]``.
    The current is the window mean ``I_t = AvgPool_k(s_t)`` (ordinary autograd)."""
    return if_step(F.avg_pool2d(spikes, kernel_size), state, threshold)


def output_step(current: Tensor, membrane: Tensor | None, leak: float) -> Tensor:
    """The output integrator at one step: ``M_t = l * (M_{t-1} + I_t)``, ``[B, K]``."""
    membrane = torch.zeros_like(current) if membrane is None else membrane
    return OutputStep.apply(current, membrane, leak)


def lif_neuron(current: Tensor, threshold: float = 1.0, leak: float = 0.99,
               inplace: bool = False, state: functional.NeuronState | None = None) -> Tensor:
    """Hidden LIF neurons over ``[T, B, ...]`` currents -> spikes ``[T, B, ...]``.

    Arguments as :func:`spiking.functional.lif_neuron`; ``inplace`` is accepted and ignored:
    the reference keeps every step's tensors and returns a new one.
    """
    state = functional.NeuronState() if state is None else state
    return torch.stack([lif_step(step, state, threshold, leak) for step in current])


def if_neuron(current: Tensor, threshold: float = 0.75,
              state: functional.NeuronState | None = None) -> Tensor:
    """Non-leaky IF neurons over ``[T, B, ...]`` currents -> spikes ``[T, B, ...]``."""
    state = functional.NeuronState() if state is None else state
    return torch.stack([if_step(step, state, threshold) for step in current])


def pooling_neuron(spikes: Tensor, threshold: float = 0.75, kernel_size: int = 2,
                   state: functional.NeuronState | None = None) -> Tensor:
    """Spatial-pooling neurons over ``[T, B, C, H, W]`` spikes -> ``[T, B, C, H/k, W/k]``."""
    state = functional.NeuronState() if state is None else state
    return torch.stack([pooling_step(step, state, threshold, kernel_size) for step in spikes])


def output_integrator(current: Tensor, leak: float = 0.99, threshold: float = 1.0) -> Tensor:
    """The output layer over ``[T, B, K]`` currents: ``M_T / (theta * T)``, ``[B, K]``."""
    membrane = None
    for step in current:
        membrane = output_step(step, membrane, leak)
    return membrane / (threshold * current.shape[0])


def conv2d(spikes: Tensor, weight: Tensor, stride: int | tuple = 1,
           padding: int | tuple = 0) -> Tensor:
    """A bias-free convolution applied step by step, ``[T, B, C, H, W] -> [T, B, C', H', W']``,
    with ordinary autograd: what the authors' loop did at every step."""
    return torch.stack([F.conv2d(step.to(weight.dtype), weight, None, stride, padding)
                        for step in spikes])


def linear(spikes: Tensor, weight: Tensor) -> Tensor:
    """A bias-free linear layer applied step by step, ``[T, B, F] -> [T, B, F']``."""
    return torch.stack([F.linear(step.to(weight.dtype), weight) for step in spikes])
