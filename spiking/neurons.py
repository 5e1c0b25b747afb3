"""Thin ``nn.Module`` wrappers around the neuron dynamics of :mod:`spiking.functional`.

A neuron layer carries its membrane from one call to the next, so a network can feed a sequence
in chunks of time steps; :func:`reset_states` puts every layer of a model back at rest, as the
authors' scripts reset the membranes for every mini-batch. ``SpikingNetwork.forward`` does this
before and after each input.
"""
from __future__ import annotations

from torch import Tensor, nn

from . import functional as SF

__all__ = ["LIFNeuron", "PoolingNeuron", "OutputIntegrator", "reset_states"]


def reset_states(model: nn.Module) -> None:
    """Put every stateful layer in ``model`` back at rest (neurons, held dropout masks)."""
    for module in model.modules():
        reset = getattr(module, "reset_state", None)
        if callable(reset):
            reset()


class LIFNeuron(nn.Module):
    """Hidden leaky integrate-and-fire neurons: currents ``[T, B, ...]`` -> spikes ``[T, B, ...]``.

    Args:
        threshold: firing threshold theta.
        leak: leak l per step.
        inplace: write the spikes over the input currents, as ``nn.ReLU(inplace=True)``; the
            networks use it, since nothing else reads a layer's current afterwards.

    A call continues from the membrane the previous call left (the next chunk of the same
    sequence) until :meth:`reset_state`; call it, or :func:`reset_states`, between sequences.
    """

    def __init__(self, threshold: float = 1.0, leak: float = 0.99, inplace: bool = False) -> None:
        super().__init__()
        self.threshold = threshold
        self.leak = leak
        self.inplace = inplace
        self.state = SF.NeuronState()

    def forward(self, current: Tensor) -> Tensor:
        return SF.lif_neuron(current, self.threshold, self.leak, self.inplace, self.state)

    def reset_state(self) -> None:
        self.state = SF.NeuronState()

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, leak={self.leak}, inplace={self.inplace}"


class PoolingNeuron(nn.Module):
    """2x2 average pooling of spikes feeding non-leaky IF neurons (docs/algorithm.md,
    *Pooling neuron*).

    ``[T, B, C, H, W]`` spikes -> ``[T, B, C, H/2, W/2]`` spikes. Carries its membrane from call
    to call until :meth:`reset_state`, as :class:`LIFNeuron`.
    """

    def __init__(self, threshold: float = 0.75, kernel_size: int = 2) -> None:
        super().__init__()
        self.threshold = threshold
        self.kernel_size = kernel_size
        self.state = SF.NeuronState()

    def forward(self, spikes: Tensor) -> Tensor:
        return SF.pooling_neuron(spikes, self.threshold, self.kernel_size, self.state)

    def reset_state(self) -> None:
        self.state = SF.NeuronState()

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, kernel_size={self.kernel_size}"


class OutputIntegrator(nn.Module):
    """Non-spiking output layer: currents ``[T, B, K]`` -> output ``[B, K]`` (docs/algorithm.md,
    *Output layer*)."""

    def __init__(self, leak: float = 0.99, threshold: float = 1.0) -> None:
        super().__init__()
        self.leak = leak
        self.threshold = threshold

    def forward(self, current: Tensor) -> Tensor:
        return SF.output_integrator(current, self.leak, self.threshold)

    def extra_repr(self) -> str:
        return f"leak={self.leak}, threshold={self.threshold}"
