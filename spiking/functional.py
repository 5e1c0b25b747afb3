"""Pure spiking dynamics and their approximate gradients (SPEC sections 1, 2, 3, 5).

Every function here works on a whole time-major sequence ``[T, B, ...]`` at once and allocates on
its input's device and dtype. The forward passes run the membrane recurrences step by step; the
backward passes need only the boolean spike train, so no float membrane is kept for autograd.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "lif_neuron",
    "if_neuron",
    "pooling_neuron",
    "lif_scan",
    "leak_correction",
    "spike_gradient_scan",
    "output_integrator",
    "poisson_encode",
]


def lif_scan(current: Tensor, threshold: float, leak: float, *, out: Tensor | None = None,
             spikes_out: Tensor | None = None, membrane_out: Tensor | None = None) -> Tensor:
    """Run leaky integrate-and-fire neurons over time; return the spike train.

    Per step: ``u_t = m_{t-1} + I_t``; spike where ``u_t > threshold`` (strict); hard reset to 0
    where it spiked; ``m_t = leak * r_t``. The membrane starts at 0.

    Args:
        current: input currents ``[T, B, ...]``.
        threshold: firing threshold theta.
        leak: multiplicative leak l per step (1 means no leak).
        out: where to write the spikes; may be ``current`` itself, because each step's current
            is read before that step's spikes are written. Default: a new tensor.
        spikes_out: optional ``torch.bool`` ``[T, B, ...]`` that receives the spikes too (what a
            backward keeps: one byte per neuron and step).
        membrane_out: optional ``[T, B, ...]`` that receives ``m_t`` (after reset and leak), for
            inspection and tests.

    Returns:
        Spikes ``[T, B, ...]``, 0 or 1 in ``current.dtype`` (``out`` if given).
    """
    out = torch.empty_like(current) if out is None else out
    membrane = torch.zeros_like(current[0])
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
    return out


def _scan_saving_spikes(current: Tensor, threshold: float, leak: float,
                        inplace: bool) -> tuple[Tensor, Tensor]:
    """:func:`lif_scan` that also returns the boolean spike train for a backward."""
    spikes = torch.empty(current.shape, dtype=torch.bool, device=current.device)
    out = lif_scan(current, threshold, leak, out=current if inplace else None, spikes_out=spikes)
    return out, spikes


def leak_correction(spikes: Tensor, leak: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """The authors' per-neuron leak correction NG of SPEC section 1.

    ``LF = sum_t leak^(T-1-t) s_t`` (computed as the recurrence ``LF <- leak * LF + s_t``),
    ``N = sum_t s_t``, ``NG = [LF > 1e-3] + ln(leak) * LF / (N + [N < 1e-3])``.

    Args:
        spikes: ``[T, B, ...]`` spike train (bool or 0/1 float).
        leak: the neuron's leak l.
        dtype: dtype of the result.

    Returns:
        NG ``[B, ...]``: about 0.99 for a neuron that fired (l = 0.99, T = 100), 0 for a silent one.
    """
    trace = torch.zeros(spikes.shape[1:], dtype=dtype, device=spikes.device)
    count = torch.zeros_like(trace)
    for t in range(spikes.shape[0]):
        trace.mul_(leak).add_(spikes[t])
        count.add_(spikes[t])
    fired = (trace > 1e-3).to(dtype)
    silent = (count < 1e-3).to(dtype)
    return fired + math.log(leak) * trace / (count + silent)


def spike_gradient_scan(grad_spikes: Tensor, spikes: Tensor,
                        scale: Tensor | float | None = None) -> Tensor:
    """Carry spike gradients back to the currents that caused them (SPEC sections 1 and 2).

    Going backwards in time with ``delta_T = 0``: ``delta_t = scale * g_t`` where the neuron
    spiked, else ``delta_{t+1}``. The leak is straight-through and the reset cuts the path, so
    the current at step t is credited with the gradient of that neuron's next spike.

    Args:
        grad_spikes: ``g_t = dLoss/ds_t``, ``[T, B, ...]``.
        spikes: boolean spike train ``[T, B, ...]``.
        scale: optional factor at a spike: per neuron ``[B, ...]`` (NG / theta for the LIF
            neuron) or one number.

    Returns:
        ``dLoss/dI_t``, ``[T, B, ...]``.
    """
    grad_current = torch.empty(grad_spikes.shape, dtype=grad_spikes.dtype,
                               device=grad_spikes.device)
    delta = torch.zeros_like(grad_current[0])
    scaled = None if scale is None else torch.empty_like(delta)
    for t in range(grad_spikes.shape[0] - 1, -1, -1):
        grad = grad_spikes[t] if scale is None else torch.mul(grad_spikes[t], scale, out=scaled)
        torch.where(spikes[t], grad, delta, out=grad_current[t])
        delta = grad_current[t]
    return grad_current


def _needs_graph(*tensors: Tensor) -> bool:
    """Whether autograd will record an op on ``tensors``; if not, skip saving for backward."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _float32_under_autocast(x: Tensor) -> Tensor:
    """Under autocast, synapses compute in half precision but the scans stay in float32:
    membranes summed over 100 steps in bf16 would drift across the threshold."""
    if x.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(x.device.type):
        return x.float()
    return x


class _LIFNeuron(torch.autograd.Function):
    """Hidden LIF neuron: exact forward, the authors' leak-aware approximate backward."""

    @staticmethod
    def forward(ctx, current: Tensor, threshold: float, leak: float, inplace: bool) -> Tensor:
        out, spikes = _scan_saving_spikes(current, threshold, leak, inplace)
        if inplace:
            ctx.mark_dirty(current)
        ctx.save_for_backward(spikes)
        ctx.threshold, ctx.leak = threshold, leak
        return out

    @staticmethod
    def backward(ctx, grad_spikes: Tensor):
        (spikes,) = ctx.saved_tensors
        scale = leak_correction(spikes, ctx.leak, grad_spikes.dtype).div_(ctx.threshold)
        return spike_gradient_scan(grad_spikes, spikes, scale), None, None, None


class _IFNeuron(torch.autograd.Function):
    """Non-leaky integrate-and-fire neuron: the gradient passes at spikes as it is."""

    @staticmethod
    def forward(ctx, current: Tensor, threshold: float) -> Tensor:
        out, spikes = _scan_saving_spikes(current, threshold, 1.0, inplace=False)
        ctx.save_for_backward(spikes)
        return out

    @staticmethod
    def backward(ctx, grad_spikes: Tensor):
        (spikes,) = ctx.saved_tensors
        return spike_gradient_scan(grad_spikes, spikes), None


def lif_neuron(current: Tensor, threshold: float = 1.0, leak: float = 0.99,
               inplace: bool = False) -> Tensor:
    """Hidden LIF neurons over time (SPEC section 1).

    Args:
        current: ``[T, B, ...]`` input currents.
        threshold: firing threshold theta.
        leak: leak l per step.
        inplace: write the spikes over ``current`` (as ``F.relu(x, inplace=True)``), saving a
            ``[T, B, ...]`` float buffer; for currents nothing else reads afterwards.

    Returns:
        Spikes ``[T, B, ...]`` with values 0 or 1 in ``current.dtype``. Their gradient is the
        authors' approximation: ``dLoss/dI_t = (NG / theta) g_t`` at a spike, else the next
        spike's, with NG from :func:`leak_correction`.
    """
    current = _float32_under_autocast(current)
    if not _needs_graph(current):
        return lif_scan(current, threshold, leak, out=current if inplace else None)
    return _LIFNeuron.apply(current, threshold, leak, inplace)


def if_neuron(current: Tensor, threshold: float = 0.75) -> Tensor:
    """Integrate-and-fire neurons without leak (the spatial-pooling neuron, SPEC section 2).

    Args:
        current: ``[T, B, ...]`` input currents (average-pooled spikes).
        threshold: firing threshold (0.75 in the authors' scripts).

    Returns:
        Spikes ``[T, B, ...]`` (0 or 1); gradient ``dLoss/dI_t = g_t`` at a spike, else the next
        spike's.
    """
    current = _float32_under_autocast(current)
    if not _needs_graph(current):
        return lif_scan(current, threshold, leak=1.0)
    return _IFNeuron.apply(current, threshold)


class _PoolingNeuron(torch.autograd.Function):
    """Average pooling of spikes into non-leaky IF neurons, with a fused backward."""

    @staticmethod
    def forward(ctx, spikes: Tensor, threshold: float, kernel_size: int) -> Tensor:
        current = F.avg_pool2d(spikes.flatten(0, 1), kernel_size).unflatten(0, spikes.shape[:2])
        out, pooled = _scan_saving_spikes(current, threshold, 1.0, inplace=True)
        ctx.save_for_backward(pooled)
        ctx.kernel_size, ctx.input_hw = kernel_size, spikes.shape[-2:]
        return out

    @staticmethod
    def backward(ctx, grad_pooled: Tensor):
        (pooled,) = ctx.saved_tensors
        k = ctx.kernel_size
        # Average pooling's gradient is nearest-neighbour upsampling divided by k*k; the division
        # rides along in the scan and the upsampling is one write, not autograd's fill + scatter.
        delta = spike_gradient_scan(grad_pooled, pooled, 1.0 / (k * k))
        *batch, height, width = delta.shape
        grad = delta[..., None, :, None].expand(*batch, height, k, width, k)
        grad = grad.reshape(*batch, height * k, width * k)
        pad_h, pad_w = ctx.input_hw[0] - height * k, ctx.input_hw[1] - width * k
        if pad_h or pad_w:
            grad = F.pad(grad, (0, pad_w, 0, pad_h))
        return grad, None, None


def pooling_neuron(spikes: Tensor, threshold: float = 0.75, kernel_size: int = 2) -> Tensor:
    """Spatial-pooling neurons (SPEC section 2): ``AvgPool2d(k)`` of spikes into IF neurons.

    Args:
        spikes: ``[T, B, C, H, W]`` spikes of the layer below.
        threshold: IF threshold (0.75 in the authors' scripts).
        kernel_size: pooling window and stride k.

    Returns:
        Spikes ``[T, B, C, H // k, W // k]`` (0 or 1), with the gradient of
        :func:`if_neuron` carried back through the average pooling.
    """
    spikes = _float32_under_autocast(spikes)
    if not _needs_graph(spikes):
        current = F.avg_pool2d(spikes.flatten(0, 1), kernel_size).unflatten(0, spikes.shape[:2])
        return lif_scan(current, threshold, leak=1.0, out=current)
    return _PoolingNeuron.apply(spikes, threshold, kernel_size)


class _OutputIntegrator(torch.autograd.Function):
    @staticmethod
    def forward(ctx, current: Tensor, leak: float, threshold: float) -> Tensor:
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
    """Non-spiking output layer (SPEC section 3).

    The membrane accumulates ``M <- leak * (M + I_t)`` over the T steps; the output is
    ``M_T / (threshold * T)``. The gradient treats the leak as straight-through: every step's
    current receives ``dLoss/dOutput / (threshold * T)``.

    Args:
        current: ``[T, B, K]`` output-layer currents.

    Returns:
        ``[B, K]`` network output.
    """
    return _OutputIntegrator.apply(_float32_under_autocast(current), leak, threshold)


def poisson_encode(images: Tensor, time_steps: int, scale: float = 1.0,
                   generator: torch.Generator | None = None) -> Tensor:
    """Signed Bernoulli ("Poisson") rate code with fresh draws at every step (SPEC section 5).

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
    fires = (images * scale).abs() > uniform
    return fires.to(images.dtype) * images.sign()
