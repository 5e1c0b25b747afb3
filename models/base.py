"""What the four networks share: construction helpers and the authors' initialisation."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn

from spiking import (
    LIFNeuron,
    PoolingNeuron,
    SpikingConv2d,
    SpikingLinear,
    SpikingNeuron,
    TimeHeldDropout,
    reset_states,
)

from .wiring import derive_synapse_inputs

__all__ = ["NeuronFactory", "SpikingNetwork", "conv3x3", "halved_by_pooling", "halved_by_stride",
           "scaled"]

Synapse = TypeVar("Synapse", SpikingConv2d, SpikingLinear)
# Makes a hidden layer's neurons from (threshold, leak, inplace=True): LIFNeuron, or a new neuron
# class with the same arguments (docs/extending.md).
NeuronFactory = Callable[..., SpikingNeuron]


def scaled(channels: int, width: float) -> int:
    """Layer width ``channels`` times the channel multiplier ``width`` (at least 1): tests
    build narrow copies."""
    return max(1, round(channels * width))


def halved_by_pooling(size: int) -> int:
    """Side of a feature map after a 2x2 pooling neuron (stride 2, no padding): floor(size / 2).
    """
    return size // 2


def halved_by_stride(size: int) -> int:
    """Side of a feature map after a stride-2 3x3 convolution with padding 1, or a stride-2 1x1
    shortcut: ceil(size / 2)."""
    return (size - 1) // 2 + 1


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> SpikingConv2d:
    return SpikingConv2d(in_channels, out_channels, 3, stride=stride, padding=1)


class SpikingNetwork(nn.Module):
    """Base class: ``forward(spikes [T, B, C, H, W]) -> output [B, num_classes]``.

    Subclasses set ``init_gain`` (k of docs/algorithm.md, *Initialisation*), build their layers
    with the factories below, call :meth:`reset_parameters` last, and define
    :meth:`forward_chunk`: the layers from the input spikes to the output layer's current, for
    any number of consecutive time steps.
    :meth:`forward` runs it on chunks of ``time_chunk`` steps, the neurons carrying their
    membranes from chunk to chunk, and integrates the output over all T. Chunking changes no
    number, only speed and memory: every backward is the one over the whole sequence.

    Attributes:
        input_shape: ``(C, H, W)`` of the images the network expects.
        num_classes: size of the output.
        leak, threshold: of every hidden LIF neuron (and the output integrator).
        neuron: makes every hidden layer's neurons, called as ``neuron(threshold, leak,
            inplace=True)``: :class:`~spiking.LIFNeuron`, the paper's, by default.
        pool_threshold: of every pooling neuron.
        dropout: p of every :class:`~spiking.TimeHeldDropout` of the network (0 = keep all).
        time_chunk: time steps per chunk; None chooses :meth:`default_time_chunk`.
    """

    init_gain: float = 2.0
    # Images per chunk of time steps on the CPU: few enough that a layer's currents stay in
    # the caches, enough to keep the convolutions efficient and the per-chunk overhead small
    # (measured per network in benchmarks/README.md).
    cpu_chunk_images: int = 64

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, leak: float,
                 threshold: float, pool_threshold: float, dropout: float,
                 neuron: NeuronFactory = LIFNeuron) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.leak = leak
        self.threshold = threshold
        self.neuron = neuron
        self.pool_threshold = pool_threshold
        self.dropout = dropout
        self.time_chunk: int | None = None
        self.synapse_inputs_read = False

    def forward_chunk(self, spikes: Tensor) -> Tensor:
        """``[T', B, C, H, W]`` input spikes -> output-layer current ``[T', B, num_classes]``."""
        raise NotImplementedError

    def default_time_chunk(self, spikes: Tensor) -> int:
        """Time steps per chunk for ``spikes`` ``[T, B, ...]``: about :attr:`cpu_chunk_images`
        images on the CPU; all T on other devices, where kernel launches rather than memory
        traffic bound the step."""
        time_steps, batch = spikes.shape[:2]
        if spikes.device.type != "cpu":
            return time_steps
        return max(1, min(time_steps, self.cpu_chunk_images // batch))

    def forward(self, spikes: Tensor) -> Tensor:
        """``[T, B, C, H, W]`` input spikes -> ``[B, num_classes]``."""
        chunk = self.time_chunk or self.default_time_chunk(spikes)
        if chunk < 1:
            raise ValueError(f"time_chunk must be a positive number of steps, got {chunk}")
        self.read_synapse_inputs()
        reset_states(self)
        try:
            currents = [self.forward_chunk(part) for part in spikes.split(chunk)]
        finally:
            # the states hold the autograd graph and the dropout masks of this input
            reset_states(self)
        return self.output(torch.cat(currents))

    def fc0_inputs(self, channels: int, height: int, width: int) -> int:
        """Inputs of fc0 from the last feature map's ``channels x height x width``.

        Raises:
            ValueError: if the images are too small to leave a feature map.
        """
        if height < 1 or width < 1:
            raise ValueError(f"{type(self).__name__} needs larger images than "
                             f"{self.input_shape[1]}x{self.input_shape[2]}: its last feature map "
                             f"would be {height}x{width}")
        return channels * height * width

    def lif(self) -> SpikingNeuron:
        """A hidden layer's neurons; they write their spikes over the current, which nothing
        else reads."""
        return self.neuron(self.threshold, self.leak, inplace=True)

    def hidden(self, synapse: Synapse) -> tuple[Synapse, SpikingNeuron, TimeHeldDropout]:
        """A hidden layer's three parts: its synapses, its LIF neurons, their held dropout."""
        return synapse, self.lif(), TimeHeldDropout(self.dropout)

    def dropout_if_any(self) -> nn.Module:
        """A :class:`TimeHeldDropout` of p = :attr:`dropout`, or an identity when p = 0, for a
        network that, like the authors', has no dropout module by default."""
        return TimeHeldDropout(self.dropout) if self.dropout > 0 else nn.Identity()

    def read_synapse_inputs(self) -> None:
        """Set every synapse's ``input_spikes`` and ``input_from_neurons`` from what feeds it in
        :meth:`forward_chunk` (:mod:`models.wiring`), once: :meth:`forward` calls it first, since
        the layers exist only once the subclass's constructor has run."""
        if not self.synapse_inputs_read:
            derive_synapse_inputs(self)
            self.synapse_inputs_read = True

    def inputs_from_neurons(self, *synapses: SpikingConv2d | SpikingLinear) -> None:
        """Declare that each of ``synapses`` reads the spikes of a layer of hidden neurons (or
        of dropout over one), which read their gradient only where they spiked: their
        event-driven backward may leave the input gradient 0 elsewhere. Only for a network whose
        :meth:`forward_chunk` cannot be traced (data-dependent control flow); the others have
        it derived (:meth:`read_synapse_inputs`). Hidden neurons whose derivative reads it
        everywhere (a surrogate gradient) declare none."""
        if not type(self.lif()).gradient_only_at_spikes():
            return
        for synapse in synapses:
            synapse.input_from_neurons = True

    def inputs_are_spikes(self) -> None:
        """Declare every synapse's input a spike train (``input_spikes``): the signed Poisson
        code, a layer's spikes, or dropout's scaled spikes. Only for a network whose
        :meth:`forward_chunk` cannot be traced; the others have it derived."""
        for module in self.modules():
            if isinstance(module, (SpikingConv2d, SpikingLinear)):
                module.input_spikes = True

    def pooling_neuron(self) -> PoolingNeuron:
        return PoolingNeuron(self.pool_threshold)

    def reset_parameters(self) -> None:
        """Weights ~ N(0, sqrt(k / fan_in)) for every conv and linear layer, shortcuts included."""
        for module in self.modules():
            if isinstance(module, (SpikingConv2d, SpikingLinear)):
                fan_in = module.weight[0].numel()
                nn.init.normal_(module.weight, 0.0, math.sqrt(self.init_gain / fan_in))
