"""Neuron layers over sequences of time steps, with the approximate gradient as custom autograd.

Each function here takes a neuron layer (:mod:`spiking.neurons`) and a time-major sequence
``[T, B, ...]`` (a whole one, or one chunk of consecutive steps continuing from a
:class:`NeuronState`), gets the kernel table of the chosen backend once for the tensors it is
given (:func:`spiking.backends.select`) and calls it: forward kernels in the forward, their
backward counterparts in the backward. The backward of the paper's neurons needs only their boolean
spike train, so no float membrane is kept for autograd. Backends that record every step
(``reference``) get one autograd node per time step, the others one per chunk.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import backends
from .backends.contract import KernelTable

__all__ = ["NeuronState", "SpikeStats", "output_integrator", "poisson_encode", "pooling_neuron",
           "records_graph", "spiking_neuron"]


@dataclass
class SpikeStats:
    """A layer's spike statistics over the steps seen so far (LIF: LF and N, ``[B, ...]``
    each), and the backward's factor computed from them. The factor depends on the whole spike
    train, so every chunk's backward reads it once the forward has seen all T steps.

    The backward keeps this object and the neuron layer, not the :class:`NeuronState`: the
    state holds the membrane, an output of the autograd Function, and a Function that kept its
    own output would tie its graph into a reference cycle, freed by Python's cycle collector at
    some later time rather than when the training step lets go of it.
    """

    tensors: tuple[Tensor, ...]
    _scale: Tensor | float | None = field(default=None, repr=False)

    def spike_scale(self, neuron: nn.Module) -> Tensor | float:
        """``neuron.spike_scale`` of the statistics, computed once, shared by every chunk."""
        if self._scale is None:
            self._scale = neuron.spike_scale(self.tensors)
        return self._scale


@dataclass
class NeuronState:
    """What a layer of neurons carries from one chunk of time steps to the next.

    A network may run its ``[T, B, ...]`` input in chunks of time steps (``[T', B, ...]`` each);
    the functions below continue from a state and update it, so the chunks give exactly the
    spikes and gradients of one call over all T steps.

    Attributes:
        membrane: ``[B, ...]`` membrane after the last step seen; None before the first.
        stats: the layer's :class:`SpikeStats` while autograd records; None until then.
    """

    membrane: Tensor | None = None
    stats: SpikeStats | None = None

    def start(self, step_shape: torch.Size, like: Tensor) -> Tensor:
        """The ``[B, ...]`` membrane to continue from: at rest (zeros) before the first chunk."""
        if self.membrane is None:
            return torch.zeros(step_shape, dtype=like.dtype, device=like.device)
        if self.membrane.shape != step_shape:
            raise ValueError(f"neuron state has shape {tuple(self.membrane.shape)} but the input "
                             f"steps are {tuple(step_shape)}: reset the state between "
                             "sequences (spiking.reset_states)")
        return self.membrane

    def stats_for(self, neuron: nn.Module, like: Tensor) -> SpikeStats:
        """The statistics the forward kernels update in place: fresh before the first chunk."""
        if self.stats is None:
            self.stats = SpikeStats(neuron.spike_stats(like))
        return self.stats


def records_graph(*tensors: Tensor | None) -> bool:
    """Whether autograd records an op on ``tensors``; if not, nothing is saved for a backward."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _float32_under_autocast(x: Tensor) -> Tensor:
    """Under autocast, synapses compute in half precision but the neurons stay in float32:
    membranes summed over 100 steps in bf16 would drift across the threshold."""
    if x.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(x.device.type):
        return x.float()
    return x


class _NeuronScan(torch.autograd.Function):
    """Spiking neurons over a chunk of steps: exact forward, the neuron's approximate backward.

    Inputs ``(current [T', B, ...], membrane [B, ...], ..., *parameters)``, outputs ``(spikes,
    membrane)``. The membrane's gradient slot carries ``dLoss/du`` across chunk boundaries: the
    backward of a chunk receives the next chunk's there and returns its own first step's. The
    neuron's parameters get the gradients the table's backward gives them.
    """

    @staticmethod
    def forward(ctx, current: Tensor, membrane: Tensor, neuron: nn.Module, stats: SpikeStats,
                kernels: KernelTable, inplace: bool, *parameters: Tensor
                ) -> tuple[Tensor, Tensor]:
        out = current if inplace else torch.empty_like(current)
        membrane, ctx.saved = kernels.neuron_forward(neuron, current, membrane.clone(),
                                                     stats.tensors, out, True)
        if inplace:
            ctx.mark_dirty(current)
        ctx.neuron, ctx.stats, ctx.kernels = neuron, stats, kernels
        return out, membrane

    @staticmethod
    def backward(ctx, grad_spikes: Tensor, grad_membrane: Tensor) -> tuple[Any, ...]:
        neuron = ctx.neuron
        grad, parameter_grads = ctx.kernels.neuron_backward(
            neuron, ctx.saved, grad_spikes.contiguous(), ctx.stats.spike_scale(neuron),
            grad_membrane.contiguous())
        return grad, grad[0], None, None, None, None, *parameter_grads


def _steps(kernels: KernelTable, sequence: Tensor) -> list[Tensor]:
    """The chunks the kernels run one autograd node each on: single steps for a backend that
    records every step, else the whole sequence."""
    return list(sequence.split(1)) if kernels.STEP_BY_STEP else [sequence]


def _scan(neuron: nn.Module, current: Tensor, state: NeuronState, kernels: KernelTable,
          inplace: bool) -> Tensor:
    """``neuron`` over ``current`` ``[T, B, ...]`` from ``state``, which it updates: under
    autograd one :class:`_NeuronScan` node per chunk of :func:`_steps`, else one pass on the
    state's own membrane, in place."""
    parameters = tuple(neuron.parameters()) if torch.is_grad_enabled() else ()
    if not records_graph(current, state.membrane, *parameters):
        out = current if inplace else torch.empty_like(current)
        membrane = state.start(current.shape[1:], current)
        state.membrane, _ = kernels.neuron_forward(neuron, current, membrane, (), out, False)
        return out
    inplace = inplace and not kernels.STEP_BY_STEP
    outputs = []
    for chunk in _steps(kernels, current):
        membrane = state.start(current.shape[1:], current)
        stats = state.stats_for(neuron, membrane)
        out, state.membrane = _NeuronScan.apply(chunk, membrane, neuron, stats, kernels, inplace,
                                                *parameters)
        outputs.append(out)
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def spiking_neuron(neuron: nn.Module, current: Tensor, state: NeuronState | None = None,
                   inplace: bool = False) -> Tensor:
    """Run the spiking neuron layer ``neuron`` (a :class:`~spiking.neurons.SpikingNeuron`)
    over ``current`` ``[T, B, ...]``.

    Args:
        neuron: defines the step and its backward; a fused backend runs the kernels generated
            from the neuron's methods, the others the methods step by step.
        current: input currents ``[T, B, ...]``.
        state: continue from this state (``current`` being the steps after the ones it has
            seen) and update it; default: one whole sequence from rest.
        inplace: write the spikes over ``current`` (a ``[T, B, ...]`` buffer saved), for
            currents nothing else reads afterwards; ignored by backends that record every step.

    Returns:
        Spikes ``[T, B, ...]``, 0 or 1 in ``current.dtype``, whose gradient is the neuron's
        approximate derivative.
    """
    current = _float32_under_autocast(current).contiguous()
    kernels = backends.select(current, neuron=neuron)
    return _scan(neuron, current, NeuronState() if state is None else state, kernels, inplace)


class _AveragePool(torch.autograd.Function):
    """The k x k average pool of spikes ``[T', B, C, H, W]`` feeding a pooling neuron."""

    @staticmethod
    def forward(ctx, spikes: Tensor, kernel_size: int, kernels: KernelTable) -> Tensor:
        ctx.kernel_size, ctx.kernels = kernel_size, kernels
        ctx.input_hw = tuple(spikes.shape[-2:])
        # detach() drops a view relation to the kernel's folded result: the pooling neuron
        # writes its spikes over this current, in place
        return kernels.average_pool(spikes, kernel_size).detach()

    @staticmethod
    def backward(ctx, grad_pooled: Tensor) -> tuple[Any, ...]:
        grad = ctx.kernels.average_pool_backward(grad_pooled.contiguous(), ctx.kernel_size,
                                                 ctx.input_hw)
        return grad, None, None


def pooling_neuron(neuron: nn.Module, spikes: Tensor, state: NeuronState | None = None) -> Tensor:
    """Run a :class:`~spiking.neurons.PoolingNeuron` over ``spikes`` ``[T, B, C, H, W]``:
    ``[T, B, C, H // k, W // k]`` spikes (0 or 1), the neurons fed by the k x k average pool
    of the spikes and their gradient carried back through it. ``state`` as for
    :func:`spiking_neuron`."""
    spikes = _float32_under_autocast(spikes).contiguous()
    kernels = backends.select(spikes, neuron=neuron)
    state = NeuronState() if state is None else state
    if records_graph(spikes, state.membrane):
        current = _AveragePool.apply(spikes, neuron.kernel_size, kernels)
    else:
        current = kernels.average_pool(spikes, neuron.kernel_size)
    return _scan(neuron, current, state, kernels, inplace=True)


class _Integration(torch.autograd.Function):
    """The output integrator's membrane over a chunk: ``(current [T', B, K], M_{-1} [B, K])``
    -> ``M_{T'-1}``. The leak is straight-through for the gradient: every step's current and
    the starting membrane receive ``dLoss/dM``."""

    @staticmethod
    def forward(ctx, current: Tensor, membrane: Tensor, neuron: nn.Module,
                kernels: KernelTable) -> Tensor:
        ctx.time_steps = current.shape[0]
        return kernels.integrator_forward(neuron, current, membrane.clone())

    @staticmethod
    def backward(ctx, grad_membrane: Tensor) -> tuple[Any, ...]:
        return grad_membrane.expand(ctx.time_steps, *grad_membrane.shape), grad_membrane, None, None


def output_integrator(neuron: nn.Module, current: Tensor) -> Tensor:
    """Run an :class:`~spiking.neurons.OutputIntegrator` over ``current`` ``[T, B, K]``: the
    network's output ``[B, K]``."""
    current = _float32_under_autocast(current).contiguous()
    kernels = backends.select(current, neuron=neuron)
    membrane = torch.zeros_like(current[0])
    if not records_graph(current):
        return neuron.readout(kernels.integrator_forward(neuron, current, membrane),
                              current.shape[0])
    for chunk in _steps(kernels, current):
        membrane = _Integration.apply(chunk, membrane, neuron, kernels)
    return neuron.readout(membrane, current.shape[0])


def poisson_encode(images: Tensor, time_steps: int, scale: float = 1.0,
                   generator: torch.Generator | None = None) -> Tensor:
    """Signed Bernoulli ("Poisson") rate code with fresh draws at every step (docs/algorithm.md,
    *Input encoding*): ``x_t = [|scale * x| > U(0, 1)] * sign(x)``. No gradient flows into
    ``images``.

    Args:
        images: ``[B, C, H, W]`` (or any ``[B, ...]``) pixel values.
        time_steps: T.
        scale: the factor a (1 for CIFAR-10 and SVHN, 0.5 for MNIST).
        generator: optional random generator on ``images.device``, for reproducible draws.

    Returns:
        Spikes ``[T, B, ...]`` with values -1, 0 or 1 in ``images.dtype``: the same on every
        backend.
    """
    images = images.detach().contiguous()
    return backends.select(images).poisson_encode(images, time_steps, scale, generator)
