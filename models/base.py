"""What the four networks share: construction helpers and the authors' initialisation."""
from __future__ import annotations

import math
from typing import TypeVar

from torch import nn

from spiking import LIFNeuron, PoolingNeuron, SpikingConv2d, SpikingLinear, TimeHeldDropout

__all__ = ["SpikingNetwork", "conv3x3", "scaled"]

Synapse = TypeVar("Synapse", SpikingConv2d, SpikingLinear)


def scaled(channels: int, width: float) -> int:
    """Layer width ``channels`` times ``width`` (at least 1): tests build narrow copies."""
    return max(1, round(channels * width))


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> SpikingConv2d:
    return SpikingConv2d(in_channels, out_channels, 3, stride=stride, padding=1)


class SpikingNetwork(nn.Module):
    """Base class: ``forward(spikes [T, B, C, H, W]) -> output [B, num_classes]``.

    Subclasses set ``init_gain`` (k of SPEC section 7), build their layers with the factories
    below and call :meth:`reset_parameters` last.

    Attributes:
        input_shape: ``(C, H, W)`` of the images the network expects.
        num_classes: size of the output.
        leak, threshold: of every hidden LIF neuron (and the output integrator).
        pool_threshold: of every pooling neuron.
        dropout: p of the dropout after every hidden LIF layer (0 = none).
    """

    init_gain: float = 2.0

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, leak: float,
                 threshold: float, pool_threshold: float, dropout: float) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.leak = leak
        self.threshold = threshold
        self.pool_threshold = pool_threshold
        self.dropout = dropout

    def lif(self) -> LIFNeuron:
        return LIFNeuron(self.threshold, self.leak, inplace=True)

    def hidden(self, synapse: Synapse) -> tuple[Synapse, LIFNeuron, TimeHeldDropout]:
        """A hidden layer's three parts: its synapses, its LIF neurons, their held dropout."""
        return synapse, self.lif(), TimeHeldDropout(self.dropout)

    def pooling_neuron(self) -> PoolingNeuron:
        return PoolingNeuron(self.pool_threshold)

    def reset_parameters(self) -> None:
        """Weights ~ N(0, sqrt(k / fan_in)) for every conv and linear layer, shortcuts included."""
        for module in self.modules():
            if isinstance(module, (SpikingConv2d, SpikingLinear)):
                fan_in = module.weight[0].numel()
                nn.init.normal_(module.weight, 0.0, math.sqrt(self.init_gain / fan_in))
