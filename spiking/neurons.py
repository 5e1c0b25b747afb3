"""The neurons of the paper, each written once: its time step and its approximate derivative.

A neuron layer is an ``nn.Module`` over time-major currents ``[T, B, ...]``. Its class defines
one time step on ``[B, ...]`` tensors, in the words of docs/algorithm.md:

- :meth:`SpikingNeuron.charge`: ``u_t`` from the membrane ``m_{t-1}`` and the current ``I_t``;
- :meth:`SpikingNeuron.fire`: the spikes ``s_t`` (bool);
- :meth:`SpikingNeuron.reset`: the membrane ``m_t`` the next step starts from;
- :meth:`SpikingNeuron.backward_step`: ``dLoss/du_t`` from ``g_t = dLoss/ds_t`` and
  ``dLoss/dm_t``, the approximate derivative, from what the forward kept of step t (the spikes,
  or the potential ``u_t`` if the class sets ``keeps_potential``) and a per-neuron factor from
  :meth:`SpikingNeuron.spike_scale`, computed after the forward pass from statistics of the
  whole spike train (:meth:`SpikingNeuron.spike_stats`, :meth:`SpikingNeuron.update_stats`).

These methods are the definition, and the only one. :mod:`spiking.functional` runs a layer
over a sequence through the kernel table of the chosen backend (:mod:`spiking.backends`): the
``reference`` and ``torch`` backends call these methods step by step, on any device; the
``cpu`` and ``triton`` backends run fused scans generated from them
(:mod:`spiking.backends.codegen`), for every neuron whose methods are elementwise tensor
expressions, so a new neuron runs as fast as the paper's. A neuron may hold parameters
(``nn.Parameter``, a learnable leak or threshold): they receive the gradient through ``charge``
and ``reset`` of the neuron's own equations, with its own derivative for the spikes.
docs/extending.md shows how to write a new neuron.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from . import functional

__all__ = ["IFNeuron", "LIFNeuron", "OutputIntegrator", "PoolingNeuron", "SpikingNeuron",
           "leak_correction", "reset_states"]


def reset_states(model: nn.Module) -> None:
    """Put every stateful layer in ``model`` back at rest (neurons, held dropout masks)."""
    for module in model.modules():
        reset = getattr(module, "reset_state", None)
        if callable(reset):
            reset()


def leak_correction(trace: Tensor, count: Tensor, leak: float | Tensor) -> Tensor:
    """The authors' leak correction NG per neuron (docs/algorithm.md, *Approximate backward*),
    from the sums over its whole spike train: ``trace = LF = sum_t l^(T-1-t) s_t`` and
    ``count = N = sum_t s_t``: ``NG = [LF > 1e-3] + ln(l) * LF / (N + [N < 1e-3])``, about
    0.99 for a neuron that fired (l = 0.99, T = 100), 0 for a silent one. ``leak``: one number,
    or a tensor that broadcasts to the neurons (a learned leak)."""
    fired = (trace > 1e-3).to(trace.dtype)
    silent = (count < 1e-3).to(trace.dtype)
    log_leak = torch.log(leak) if isinstance(leak, Tensor) else math.log(leak)
    return fired + log_leak * trace / (count + silent)


class SpikingNeuron(nn.Module):
    """Base of spiking neuron layers: currents ``[T, B, ...]`` -> spikes ``[T, B, ...]`` (0 or
    1 in the currents' dtype).

    Subclasses define :meth:`charge`, and may redefine :meth:`fire`, :meth:`reset`,
    :meth:`backward_step` and the spike statistics; the defaults are the authors' strict
    threshold, hard reset and straight-through backward. A layer carries its membrane from one
    call to the next (the next chunk of time steps of the same input) until
    :meth:`reset_state`; ``SpikingNetwork.forward`` resets every layer before and after an
    input, as the authors' scripts reset the membranes for every mini-batch.

    Args:
        threshold: firing threshold theta.
        inplace: write the spikes over the input currents, as ``nn.ReLU(inplace=True)``; the
            networks use it, since nothing else reads a layer's current afterwards.
    """

    # What the backward keeps of each step for backward_step: the spikes (False: one byte per
    # neuron and step) or the potential u_t (True: a float), for a derivative that needs it.
    keeps_potential: ClassVar[bool] = False
    # Whether backward_step reads grad_spikes only where the neuron spiked, as the authors' rule
    # does: see gradient_only_at_spikes.
    grad_only_at_spikes: ClassVar[bool] = True

    def __init__(self, threshold: float, inplace: bool = False) -> None:
        super().__init__()
        self.threshold = threshold
        self.inplace = inplace
        self.state = functional.NeuronState()

    def charge(self, membrane: Tensor, current: Tensor) -> Tensor:
        """``u_t`` from ``m_{t-1}`` and ``I_t``, ``[B, ...]``."""
        raise NotImplementedError

    def fire(self, potential: Tensor) -> Tensor:
        """``s_t = [u_t > theta]``, strictly above the threshold (bool)."""
        return potential > self.threshold

    def reset(self, potential: Tensor, spikes: Tensor) -> Tensor:
        """``m_t``: the hard reset to 0 where the neuron fired, ``u_t`` elsewhere."""
        return torch.where(spikes, 0.0, potential)

    def backward_step(self, grad_spikes: Tensor, grad_membrane: Tensor, spikes: Tensor,
                      scale: Tensor | float) -> Tensor:
        """``dLoss/du_t`` (which is both ``dLoss/dI_t`` and ``dLoss/dm_{t-1}``) from
        ``g_t = dLoss/ds_t``, ``dLoss/dm_t`` and the step's ``spikes`` (its potential instead,
        for a class that sets ``keeps_potential``): at a spike, ``scale * g_t``, and the reset
        cuts the membrane's path; elsewhere the membrane's gradient passes straight through (the
        leak is ignored by the gradient)."""
        return torch.where(spikes, scale * grad_spikes, grad_membrane)

    @classmethod
    def gradient_only_at_spikes(cls) -> bool:
        """Whether :meth:`backward_step` reads ``grad_spikes`` only where the neuron spiked:
        then a synapse these neurons feed may compute its input gradient at their spikes alone
        (event-driven). A class that redefines ``backward_step`` is taken to read it everywhere
        unless it sets ``grad_only_at_spikes = True`` in its own body."""
        for klass in cls.__mro__:
            if "backward_step" in vars(klass):
                return vars(klass).get("grad_only_at_spikes", klass is SpikingNeuron)
        return False

    def spike_stats(self, like: Tensor) -> tuple[Tensor, ...]:
        """Fresh per-neuron statistics ``[B, ...]`` that the forward accumulates over the spike
        train for :meth:`spike_scale` (none by default)."""
        return ()

    def update_stats(self, stats: tuple[Tensor, ...], spikes: Tensor) -> None:
        """Add step t's spikes ``s_t`` (bool ``[B, ...]``) to ``stats``, in place."""

    def spike_scale(self, stats: tuple[Tensor, ...]) -> Tensor | float:
        """The factor :meth:`backward_step` applies at a spike, per neuron ``[B, ...]`` or one
        number, computed once the forward has seen every step."""
        return 1.0

    def forward(self, current: Tensor) -> Tensor:
        return functional.spiking_neuron(self, current, self.state, self.inplace)

    def reset_state(self) -> None:
        self.state = functional.NeuronState()

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, inplace={self.inplace}"


class IFNeuron(SpikingNeuron):
    """Integrate-and-fire neurons without leak: ``u_t = m_{t-1} + I_t``, the default fire,
    reset and backward with factor 1 (docs/algorithm.md, *Pooling neuron*)."""

    def __init__(self, threshold: float = 0.75, inplace: bool = False) -> None:
        super().__init__(threshold, inplace)

    def charge(self, membrane: Tensor, current: Tensor) -> Tensor:
        return membrane + current


class LIFNeuron(IFNeuron):
    """Hidden leaky integrate-and-fire neurons with the authors' leak-corrected derivative
    (docs/algorithm.md, *Hidden LIF neuron*, *Approximate backward*).

    Per step: ``u_t = m_{t-1} + I_t``; ``s_t = [u_t > theta]``; ``m_t = l * r_t`` with ``r_t``
    the hard reset. Backward: ``dLoss/dI_t = (NG / theta) g_t`` at a spike, else the next
    spike's, NG from :func:`leak_correction` over the whole spike train.

    Args:
        threshold: firing threshold theta.
        leak: leak l per step.
        inplace: as :class:`SpikingNeuron`.
    """

    def __init__(self, threshold: float = 1.0, leak: float = 0.99, inplace: bool = False) -> None:
        super().__init__(threshold, inplace)
        self.leak = leak

    def reset(self, potential: Tensor, spikes: Tensor) -> Tensor:
        return self.leak * super().reset(potential, spikes)

    def spike_stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(LF, N)``: the leak-weighted spike trace and the spike count, zeros like ``like``."""
        return torch.zeros_like(like), torch.zeros_like(like)

    def update_stats(self, stats: tuple[Tensor, ...], spikes: Tensor) -> None:
        trace, count = stats
        trace.mul_(self.leak).add_(spikes)  # LF <- l * LF + s_t
        count.add_(spikes)                  # N <- N + s_t

    def spike_scale(self, stats: tuple[Tensor, ...]) -> Tensor:
        """``NG / theta`` per neuron."""
        trace, count = stats
        return leak_correction(trace, count, self.leak) / self.threshold

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, leak={self.leak}, inplace={self.inplace}"


class PoolingNeuron(IFNeuron):
    """Spatial pooling: the k x k average of the spikes below feeds non-leaky IF neurons
    (docs/algorithm.md, *Pooling neuron*).

    ``[T, B, C, H, W]`` spikes -> ``[T, B, C, H // k, W // k]`` spikes; the gradient of the IF
    neurons is carried back through the average pool. Carries its membrane from call to call,
    as :class:`SpikingNeuron`.
    """

    def __init__(self, threshold: float = 0.75, kernel_size: int = 2) -> None:
        super().__init__(threshold)
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be at least 1, got {kernel_size}")
        self.kernel_size = kernel_size

    def forward(self, spikes: Tensor) -> Tensor:
        return functional.pooling_neuron(self, spikes, self.state)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, kernel_size={self.kernel_size}"


class OutputIntegrator(nn.Module):
    """The non-spiking output layer: currents ``[T, B, K]`` -> output ``[B, K]``
    (docs/algorithm.md, *Output layer*).

    The membrane accumulates ``M_t = l (M_{t-1} + I_t)`` from 0 (:meth:`charge`); the output is
    ``M_{T-1} / (theta T)`` (:meth:`readout`). For the gradient the leak is straight-through:
    every step's current receives ``dLoss/dM_{T-1}``.
    """

    def __init__(self, leak: float = 0.99, threshold: float = 1.0) -> None:
        super().__init__()
        self.leak = leak
        self.threshold = threshold

    def charge(self, membrane: Tensor, current: Tensor) -> Tensor:
        """``M_t`` from ``M_{t-1}`` and ``I_t``, ``[B, K]``."""
        return self.leak * (membrane + current)

    def readout(self, membrane: Tensor, time_steps: int) -> Tensor:
        """The network's output from the final membrane ``[B, K]``."""
        return membrane / (self.threshold * time_steps)

    def forward(self, current: Tensor) -> Tensor:
        return functional.output_integrator(self, current)

    def extra_repr(self) -> str:
        return f"leak={self.leak}, threshold={self.threshold}"
