"""Spiking dynamics and their approximate gradients, over whole sequences of time steps.

The algorithm is described in docs/algorithm.md (*Hidden LIF neuron*, *Pooling neuron*,
*Output layer*, *Approximate backward*, *Input encoding*) and written one step at a time in
:mod:`spiking.reference`; this module computes the same numbers faster. Every function here works
on a time-major sequence ``[T, B, ...]`` (a whole one, or one chunk of consecutive steps
continuing from a :class:`NeuronState`) and allocates on its input's device and dtype. The
forward passes run the membrane recurrences step by step; the backward passes need only the
boolean spike train, so no float membrane is kept for autograd. Where :mod:`spiking.backend`
chooses the ``reference`` backend, the neuron functions hand over to :mod:`spiking.reference`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import ModuleType
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import cpu_kernels, reference, triton_kernels

__all__ = [
    "NeuronState",
    "lif_neuron",
    "if_neuron",
    "pooling_neuron",
    "lif_scan",
    "leak_correction",
    "spike_gradient_scan",
    "output_integrator",
    "poisson_encode",
]


@dataclass
class LeakSums:
    """A LIF layer's running spike sums, ``[B, ...]`` each, over the steps seen so far: the
    leak-weighted ``trace`` (LF) and the ``count`` (N). The leak correction NG of the backward
    depends on the whole spike train, so every chunk's backward reads them once the forward has
    seen all T steps.

    The backward keeps this object, not the :class:`NeuronState`: the state also holds the
    membrane, an output of the autograd Function, and a Function that kept its own output
    would form a reference cycle through autograd's C++ graph that Python's garbage collector
    cannot free (every training step's graph would leak).
    """

    trace: Tensor
    count: Tensor
    _spike_scale: Tensor | None = field(default=None, repr=False)

    def spike_scale(self, leak: float, threshold: float) -> Tensor:
        """NG / theta, the LIF backward's factor at a spike, with NG of :func:`leak_correction`
        over all chunks; computed once per forward, shared by every chunk's backward."""
        if self._spike_scale is None:
            self._spike_scale = _leak_correction_of_sums(self.trace, self.count, leak)
            self._spike_scale.div_(threshold)
        return self._spike_scale


@dataclass
class NeuronState:
    """What a layer of neurons carries from one chunk of time steps to the next.

    A network may run its ``[T, B, ...]`` input in chunks of time steps (``[T', B, ...]`` each);
    the neuron functions below continue from a state and update it, so the chunks give exactly
    the spikes and gradients of one call over all T steps.

    Attributes:
        membrane: ``[B, ...]`` membrane ``m`` after the last step seen; None before the first.
        sums: a LIF layer's :class:`LeakSums` while autograd records; None until the first
            such chunk.
    """

    membrane: Tensor | None = None
    sums: LeakSums | None = None

    def start(self, step_shape: torch.Size, like: Tensor) -> Tensor:
        """The ``[B, ...]`` membrane to continue from: at rest (zeros) before the first chunk."""
        if self.membrane is None:
            return torch.zeros(step_shape, dtype=like.dtype, device=like.device)
        if self.membrane.shape != step_shape:
            raise ValueError(f"neuron state has shape {tuple(self.membrane.shape)} but the input "
                             f"steps are {tuple(step_shape)}: reset the state between "
                             "sequences (spiking.reset_states)")
        return self.membrane

    def leak_sums(self, like: Tensor) -> LeakSums:
        """The :class:`LeakSums` for a scan to update in place: zeros like the ``[B, ...]``
        membrane ``like`` before the first chunk."""
        if self.sums is None:
            self.sums = LeakSums(torch.zeros_like(like), torch.zeros_like(like))
        return self.sums


def _fused_kernels(*tensors: Tensor | None) -> ModuleType | None:
    """The fused kernels of the chosen backend (:mod:`spiking.backend`) that run on
    ``tensors``: :mod:`spiking.cpu_kernels`, :mod:`spiking.triton_kernels`, or None for the
    PyTorch loops."""
    for kernels in (cpu_kernels, triton_kernels):
        if kernels.usable(*tensors):
            return kernels
    return None


def lif_scan(current: Tensor, threshold: float, leak: float, *, membrane: Tensor | None = None,
             out: Tensor | None = None, spikes_out: Tensor | None = None,
             membrane_out: Tensor | None = None,
             spike_sums: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Run leaky integrate-and-fire neurons over time; return the spike train.

    Per step: ``u_t = m_{t-1} + I_t``; spike where ``u_t > threshold`` (strict); hard reset to 0
    where it spiked; ``m_t = leak * r_t``. Where :mod:`spiking.backend` chooses ``cpu`` or
    ``triton``, contiguous float32/float64 tensors go through that backend's fused kernel (same
    bits); otherwise through a PyTorch loop.

    Args:
        current: input currents ``[T, B, ...]``.
        threshold: firing threshold theta.
        leak: multiplicative leak l per step (1 means no leak).
        membrane: ``[B, ...]`` membrane to start from, updated in place to the last step's
            ``m``. Default: start at rest (0) and discard the final membrane.
        out: where to write the spikes; may be ``current`` itself, because each step's current
            is read before that step's spikes are written. Default: a new tensor.
        spikes_out: optional ``torch.bool`` ``[T, B, ...]`` that receives the spikes too (what a
            backward keeps: one byte per neuron and step).
        membrane_out: optional ``[T, B, ...]`` that receives ``m_t`` (after reset and leak), for
            inspection and tests.
        spike_sums: optional ``(trace, count)``, ``[B, ...]`` each, updated in place by
            ``trace <- leak * trace + s_t`` and ``count <- count + s_t`` at every step: the
            sums :func:`leak_correction` needs.

    Returns:
        Spikes ``[T, B, ...]``, 0 or 1 in ``current.dtype`` (``out`` if given).
    """
    membrane = torch.zeros_like(current[0]) if membrane is None else membrane
    trace, count = (None, None) if spike_sums is None else spike_sums
    kernels = _fused_kernels(current, membrane, out, spikes_out, trace, count)
    if membrane_out is None and kernels is not None:
        if out is None:
            out = current.clone()
        elif out is not current:
            out.copy_(current)
        return kernels.lif_scan(out, threshold, leak, membrane, spikes_out, trace, count)
    out = torch.empty_like(current) if out is None else out
    for t in range(current.shape[0]):
        membrane.add_(current[t])
        spikes = torch.gt(membrane, threshold, out=out[t])
        membrane.addcmul_(membrane, spikes, value=-1)  # m - m * 1 is exactly 0: the hard reset
        if leak != 1:
            membrane.mul_(leak)
        if spikes_out is not None:
            spikes_out[t].copy_(spikes)
        if membrane_out is not None:
            membrane_out[t] = membrane
        if trace is not None and count is not None:
            trace.mul_(leak).add_(spikes)
            count.add_(spikes)
    return out


def leak_correction(spikes: Tensor | Sequence[Tensor], leak: float,
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """The authors' per-neuron leak correction NG (docs/algorithm.md, *Approximate backward*).

    ``LF = sum_t leak^(T-1-t) s_t`` (computed as the recurrence ``LF <- leak * LF + s_t``),
    ``N = sum_t s_t``, ``NG = [LF > 1e-3] + ln(leak) * LF / (N + [N < 1e-3])``.

    Args:
        spikes: ``[T, B, ...]`` spike train (bool or 0/1 float), or its consecutive chunks
            ``[T', B, ...]`` in time order.
        leak: the neuron's leak l.
        dtype: dtype of the result.

    Returns:
        NG ``[B, ...]``: about 0.99 for a neuron that fired (l = 0.99, T = 100), 0 for a silent one.
    """
    chunks = [spikes] if isinstance(spikes, Tensor) else list(spikes)
    trace = torch.zeros(chunks[0].shape[1:], dtype=dtype, device=chunks[0].device)
    count = torch.zeros_like(trace)
    for chunk in chunks:
        for step in chunk:
            trace.mul_(leak).add_(step)
            count.add_(step)
    return _leak_correction_of_sums(trace, count, leak)


def _leak_correction_of_sums(trace: Tensor, count: Tensor, leak: float) -> Tensor:
    """NG from ``trace = LF`` and ``count = N`` (see :func:`leak_correction`)."""
    fired = (trace > 1e-3).to(trace.dtype)
    silent = (count < 1e-3).to(trace.dtype)
    return fired + math.log(leak) * trace / (count + silent)


def spike_gradient_scan(grad_spikes: Tensor, spikes: Tensor, scale: Tensor | float | None = None,
                        carry: Tensor | None = None) -> Tensor:
    """Carry spike gradients back to the currents that caused them (docs/algorithm.md,
    *Approximate backward*).

    Going backwards in time from ``delta_T = carry`` (0 at the end of the sequence):
    ``delta_t = scale * g_t`` where the neuron spiked, else ``delta_{t+1}``. The leak is
    straight-through and the reset cuts the path, so the current at step t is credited with the
    gradient of that neuron's next spike. Where :mod:`spiking.backend` chooses ``cpu`` or
    ``triton``, contiguous float32/float64 tensors go through that backend's fused kernel (same
    bits); otherwise through a PyTorch loop.

    Args:
        grad_spikes: ``g_t = dLoss/ds_t``, ``[T, B, ...]``.
        spikes: boolean spike train ``[T, B, ...]``.
        scale: optional factor at a spike: per neuron ``[B, ...]`` (NG / theta for the LIF
            neuron) or one number.
        carry: ``[B, ...]`` delta of the step after this chunk (the first step of the next one).

    Returns:
        ``dLoss/dI_t``, ``[T, B, ...]``; its step 0 is the carry for the chunk before.
    """
    per_neuron = scale if isinstance(scale, Tensor) else None
    if cpu_kernels.usable(grad_spikes, spikes, carry, per_neuron):
        step = grad_spikes[0]
        if per_neuron is None:
            per_neuron = torch.full_like(step, 1.0 if scale is None else scale)
        carry = torch.zeros_like(step) if carry is None else carry
        per_neuron = per_neuron.expand_as(step).contiguous()
        return cpu_kernels.gradient_scan(grad_spikes, spikes, per_neuron, carry)
    if triton_kernels.usable(grad_spikes, spikes, carry, per_neuron):
        return triton_kernels.gradient_scan(grad_spikes, spikes, scale, carry)
    grad_current = torch.empty(grad_spikes.shape, dtype=grad_spikes.dtype,
                               device=grad_spikes.device)
    delta = torch.zeros_like(grad_current[0]) if carry is None else carry
    scaled = None if scale is None else torch.empty_like(grad_current[0])
    for t in range(grad_spikes.shape[0] - 1, -1, -1):
        grad = grad_spikes[t] if scale is None else torch.mul(grad_spikes[t], scale, out=scaled)
        torch.where(spikes[t], grad, delta, out=grad_current[t])
        delta = grad_current[t]
    return grad_current


def _needs_graph(*tensors: Tensor | None) -> bool:
    """Whether autograd will record an op on ``tensors``; if not, skip saving for backward."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _float32_under_autocast(x: Tensor) -> Tensor:
    """Under autocast, synapses compute in half precision but the scans stay in float32:
    membranes summed over 100 steps in bf16 would drift across the threshold."""
    if x.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(x.device.type):
        return x.float()
    return x


def _scan_saving_spikes(current: Tensor, threshold: float, leak: float, membrane: Tensor,
                        inplace: bool, spike_sums: tuple[Tensor, Tensor] | None = None
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`lif_scan` from a copy of ``membrane`` that also returns the boolean spike train
    for a backward: ``(spikes, bool spikes, final membrane)``."""
    membrane = membrane.clone()
    spikes = torch.empty(current.shape, dtype=torch.bool, device=current.device)
    out = lif_scan(current, threshold, leak, membrane=membrane,
                   out=current if inplace else None, spikes_out=spikes, spike_sums=spike_sums)
    return out, spikes, membrane


class _SpikingNeuron(torch.autograd.Function):
    """Integrate-and-fire neurons over a chunk of steps: exact forward, approximate backward.

    Inputs ``(current [T', B, ...], membrane [B, ...])``, outputs ``(spikes, membrane)``. The
    membrane's gradient slot carries delta across chunk boundaries: the backward of a chunk
    receives the next chunk's ``delta`` there and returns its own first step's. Given a
    :class:`LeakSums` (the hidden LIF neuron) the forward adds the chunk's spikes to its LF
    and N and the backward scales a spike's gradient by NG / theta; given None (the pooling IF
    neuron) a spike passes its gradient unscaled.
    """

    @staticmethod
    def forward(ctx, current: Tensor, membrane: Tensor, threshold: float, leak: float,
                inplace: bool, sums: LeakSums | None) -> tuple[Tensor, Tensor]:
        spike_sums = None if sums is None else (sums.trace, sums.count)
        out, spikes, membrane = _scan_saving_spikes(current, threshold, leak, membrane, inplace,
                                                    spike_sums)
        if inplace:
            ctx.mark_dirty(current)
        ctx.save_for_backward(spikes)
        ctx.threshold, ctx.leak, ctx.sums = threshold, leak, sums
        return out, membrane

    @staticmethod
    def backward(ctx, grad_spikes: Tensor, grad_membrane: Tensor):
        (spikes,) = ctx.saved_tensors
        scale = None
        if ctx.sums is not None:  # the LIF neuron: NG / theta at a spike
            scale = ctx.sums.spike_scale(ctx.leak, ctx.threshold)
        grad_current = spike_gradient_scan(grad_spikes, spikes, scale, carry=grad_membrane)
        return grad_current, grad_current[0], None, None, None, None


def _run_neuron(current: Tensor, threshold: float, leak: float, inplace: bool,
                state: NeuronState | None, leak_corrected: bool) -> Tensor:
    current = _float32_under_autocast(current)
    state = NeuronState() if state is None else state
    membrane = state.start(current.shape[1:], current)
    if not _needs_graph(current, membrane):
        out = lif_scan(current, threshold, leak, membrane=membrane,
                       out=current if inplace else None)
    else:
        sums = state.leak_sums(membrane) if leak_corrected else None
        out, membrane = _SpikingNeuron.apply(current, membrane, threshold, leak, inplace, sums)
    state.membrane = membrane
    return out


def lif_neuron(current: Tensor, threshold: float = 1.0, leak: float = 0.99,
               inplace: bool = False, state: NeuronState | None = None) -> Tensor:
    """Hidden LIF neurons over time (docs/algorithm.md, *Hidden LIF neuron*).

    Args:
        current: ``[T, B, ...]`` input currents.
        threshold: firing threshold theta.
        leak: leak l per step.
        inplace: write the spikes over ``current`` (as ``F.relu(x, inplace=True)``), saving a
            ``[T, B, ...]`` float buffer; for currents nothing else reads afterwards.
        state: continue from this state (``current`` being the steps after the ones it has
            seen) and update it; default: one whole sequence from rest.

    Returns:
        Spikes ``[T, B, ...]`` with values 0 or 1 in ``current.dtype``. Their gradient is the
        authors' approximation: ``dLoss/dI_t = (NG / theta) g_t`` at a spike, else the next
        spike's, with NG from :func:`leak_correction` over the whole sequence.
    """
    if reference.chosen(current):
        return reference.lif_neuron(_float32_under_autocast(current), threshold, leak, inplace,
                                    state)
    return _run_neuron(current, threshold, leak, inplace, state, leak_corrected=True)


def if_neuron(current: Tensor, threshold: float = 0.75, state: NeuronState | None = None) -> Tensor:
    """Integrate-and-fire neurons without leak (docs/algorithm.md, *Pooling neuron*).

    Args:
        current: ``[T, B, ...]`` input currents (average-pooled spikes).
        threshold: firing threshold (0.75 in the authors' scripts).
        state: as for :func:`lif_neuron`.

    Returns:
        Spikes ``[T, B, ...]`` (0 or 1); gradient ``dLoss/dI_t = g_t`` at a spike, else the next
        spike's.
    """
    if reference.chosen(current):
        return reference.if_neuron(_float32_under_autocast(current), threshold, state)
    return _run_neuron(current, threshold, 1.0, False, state, leak_corrected=False)


def _average_pool(spikes: Tensor, kernel_size: int) -> Tensor:
    """``[T, B, C, H, W]`` -> ``[T, B, C, H // k, W // k]``: the window means of each image."""
    kernels = _fused_kernels(spikes)
    if kernels is not None:
        return kernels.avg_pool(spikes, kernel_size)
    return F.avg_pool2d(spikes.flatten(0, 1), kernel_size).unflatten(0, spikes.shape[:2])


class _PoolingNeuron(torch.autograd.Function):
    """Average pooling of spikes into non-leaky IF neurons, with a fused backward.

    Inputs and outputs as :class:`_SpikingNeuron`, the membrane at the pooled resolution.
    """

    @staticmethod
    def forward(ctx, spikes: Tensor, membrane: Tensor, threshold: float,
                kernel_size: int) -> tuple[Tensor, Tensor]:
        if triton_kernels.usable(spikes, membrane):  # pool and scan in one launch
            membrane = membrane.clone()
            pooled = torch.empty((spikes.shape[0], *membrane.shape), dtype=torch.bool,
                                 device=spikes.device)
            out = triton_kernels.pooling_scan(spikes, threshold, kernel_size, membrane, pooled)
        else:
            current = _average_pool(spikes, kernel_size)
            out, pooled, membrane = _scan_saving_spikes(current, threshold, 1.0, membrane,
                                                        inplace=True)
        ctx.save_for_backward(pooled)
        ctx.kernel_size, ctx.input_hw = kernel_size, spikes.shape[-2:]
        return out, membrane

    @staticmethod
    def backward(ctx, grad_pooled: Tensor, grad_membrane: Tensor):
        (pooled,) = ctx.saved_tensors
        k = ctx.kernel_size
        if triton_kernels.usable(grad_pooled, pooled, grad_membrane):  # scan and spread at once
            grad, delta_first = triton_kernels.pooling_gradient_scan(
                grad_pooled, pooled, k, grad_membrane, *ctx.input_hw)
            return grad, delta_first, None, None
        # Average pooling's gradient is nearest-neighbour upsampling divided by k*k; the division
        # rides along in the scan and the upsampling is one write, not autograd's fill + scatter.
        delta = spike_gradient_scan(grad_pooled, pooled, 1.0 / (k * k), carry=grad_membrane)
        if cpu_kernels.usable(delta):
            return cpu_kernels.upsample(delta, k, *ctx.input_hw), delta[0], None, None
        *batch, height, width = delta.shape
        grad = delta[..., None, :, None].expand(*batch, height, k, width, k)
        grad = grad.reshape(*batch, height * k, width * k)
        pad_h, pad_w = ctx.input_hw[0] - height * k, ctx.input_hw[1] - width * k
        if pad_h or pad_w:
            grad = F.pad(grad, (0, pad_w, 0, pad_h))
        return grad, delta[0], None, None


def pooling_neuron(spikes: Tensor, threshold: float = 0.75, kernel_size: int = 2,
                   state: NeuronState | None = None) -> Tensor:
    """Spatial-pooling neurons (docs/algorithm.md, *Pooling neuron*): ``AvgPool2d(k)`` of
    spikes into IF neurons.

    Args:
        spikes: ``[T, B, C, H, W]`` spikes of the layer below.
        threshold: IF threshold (0.75 in the authors' scripts).
        kernel_size: pooling window and stride k.
        state: as for :func:`lif_neuron`.

    Returns:
        Spikes ``[T, B, C, H // k, W // k]`` (0 or 1), with the gradient of
        :func:`if_neuron` carried back through the average pooling.
    """
    spikes = _float32_under_autocast(spikes)
    if reference.chosen(spikes):
        return reference.pooling_neuron(spikes, threshold, kernel_size, state)
    state = NeuronState() if state is None else state
    if not _needs_graph(spikes, state.membrane):
        current = _average_pool(spikes, kernel_size)
        membrane = state.start(current.shape[1:], current)
        out = lif_scan(current, threshold, 1.0, membrane=membrane, out=current)
    else:
        *batch, height, width = spikes.shape[1:]
        pooled_shape = torch.Size((*batch, height // kernel_size, width // kernel_size))
        membrane = state.start(pooled_shape, spikes)
        out, membrane = _PoolingNeuron.apply(spikes, membrane, threshold, kernel_size)
    state.membrane = membrane
    return out


class _OutputIntegrator(torch.autograd.Function):
    @staticmethod
    def forward(ctx, current: Tensor, leak: float, threshold: float) -> Tensor:
        if triton_kernels.usable(current):  # one launch instead of two per step
            membrane = triton_kernels.output_integrator(current, leak)
        else:
            membrane = torch.zeros_like(current[0])
            for t in range(current.shape[0]):
                membrane = leak * (membrane + current[t])
        ctx.time_steps, ctx.threshold = current.shape[0], threshold
        return membrane / (threshold * current.shape[0])

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        grad_step = grad_output / (ctx.threshold * ctx.time_steps)
        return grad_step.expand(ctx.time_steps, *grad_step.shape), None, None


def output_integrator(current: Tensor, leak: float = 0.99, threshold: float = 1.0) -> Tensor:
    """Non-spiking output layer (docs/algorithm.md, *Output layer*).

    The membrane accumulates ``M <- leak * (M + I_t)`` over the T steps; the output is
    ``M_T / (threshold * T)``. The gradient treats the leak as straight-through: every step's
    current receives ``dLoss/dOutput / (threshold * T)``.

    Args:
        current: ``[T, B, K]`` output-layer currents.

    Returns:
        ``[B, K]`` network output.
    """
    current = _float32_under_autocast(current)
    if reference.chosen(current):
        return reference.output_integrator(current, leak, threshold)
    return _OutputIntegrator.apply(current, leak, threshold)


def poisson_encode(images: Tensor, time_steps: int, scale: float = 1.0,
                   generator: torch.Generator | None = None) -> Tensor:
    """Signed Bernoulli ("Poisson") rate code with fresh draws at every step (docs/algorithm.md,
    *Input encoding*).

    ``x_t = [|scale * x| > U(0, 1)] * sign(x)``. No gradient flows into ``images``.

    Args:
        images: ``[B, C, H, W]`` (or any ``[B, ...]``) pixel values.
        time_steps: T.
        scale: the factor a (1 for CIFAR-10 and SVHN, 0.5 for MNIST).
        generator: optional random generator on ``images.device``, for reproducible draws.

    Returns:
        Spikes ``[T, B, ...]`` with values -1, 0 or 1 in ``images.dtype``.
    """
    images = images.detach()
    uniform = torch.rand((time_steps, *images.shape), generator=generator,
                         dtype=images.dtype, device=images.device)
    magnitude, sign = (images * scale).abs(), images.sign()
    kernels = _fused_kernels(uniform, magnitude, sign)
    if kernels is cpu_kernels:
        return kernels.poisson_spikes(uniform, magnitude, sign)
    return (magnitude > uniform).to(images.dtype) * sign
