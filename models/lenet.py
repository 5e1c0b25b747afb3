"""LeNet for MNIST (docs/algorithm.md, *Architectures*)."""
from __future__ import annotations

from torch import Tensor

from spiking import LIFNeuron, OutputIntegrator, SpikingConv2d, SpikingLinear

from .base import NeuronFactory, SpikingNetwork, halved_by_pooling, scaled

__all__ = ["LeNet"]


class LeNet(SpikingNetwork):
    """The authors' spiking LeNet.

    | layer       | shape                     |
    |-------------|---------------------------|
    | cnn1, pool1 | 5x5 1->20, 28x28 -> 14x14 |
    | cnn2, pool2 | 5x5 20->50, 14 -> 7       |
    | fc0, fc1    | 2450->200, 200->10        |

    The authors' LeNet has no dropout, and by default (``dropout=0``) neither has this one: no
    dropout module at all. ``dropout > 0``, not in the paper, puts a
    :class:`~spiking.TimeHeldDropout` after each hidden LIF layer (``drop1``, ``drop2``,
    ``drop_fc0``), as in the other networks.

    Args:
        num_classes: outputs of fc1.
        leak: leak of every LIF neuron and of the output integrator.
        threshold: threshold of the hidden LIF neurons and the output scaling.
        pool_threshold: threshold of the pooling neurons.
        dropout: p of the dropout after every hidden LIF layer (0: none, the paper's network).
        width: channel multiplier of every hidden layer (1 = the paper's network).
        input_shape: ``(C, H, W)`` of the input images, at least 4x4.
        neuron: makes every hidden layer's neurons, ``neuron(threshold, leak, inplace=True)``
            (the paper's :class:`~spiking.LIFNeuron`; docs/extending.md).
    """

    init_gain = 2.0
    cpu_chunk_images = 128  # its layers are small: 4 steps at batch 32 beat 2 by 8 %

    def __init__(self, num_classes: int = 10, leak: float = 0.99, threshold: float = 1.0,
                 pool_threshold: float = 0.75, dropout: float = 0.0, width: float = 1.0,
                 input_shape: tuple[int, int, int] = (1, 28, 28),
                 neuron: NeuronFactory = LIFNeuron) -> None:
        super().__init__(input_shape, num_classes, leak, threshold, pool_threshold, dropout,
                         neuron)
        in_channels, image_height, image_width = input_shape
        c1, c2, f0 = scaled(20, width), scaled(50, width), scaled(200, width)
        fc0_height, fc0_width = (halved_by_pooling(halved_by_pooling(side))
                                 for side in (image_height, image_width))

        self.cnn1 = SpikingConv2d(in_channels, c1, 5, padding=2)
        self.lif1, self.drop1 = self.lif(), self.dropout_if_any()
        self.pool1 = self.pooling_neuron()
        self.cnn2 = SpikingConv2d(c1, c2, 5, padding=2)
        self.lif2, self.drop2 = self.lif(), self.dropout_if_any()
        self.pool2 = self.pooling_neuron()
        self.fc0 = SpikingLinear(self.fc0_inputs(c2, fc0_height, fc0_width), f0)
        self.lif_fc0, self.drop_fc0 = self.lif(), self.dropout_if_any()
        self.fc1 = SpikingLinear(f0, num_classes)
        self.output = OutputIntegrator(leak, threshold)
        self.reset_parameters()

    def forward_chunk(self, spikes: Tensor) -> Tensor:
        x = self.pool1(self.drop1(self.lif1(self.cnn1(spikes))))
        x = self.pool2(self.drop2(self.lif2(self.cnn2(x))))
        x = self.drop_fc0(self.lif_fc0(self.fc0(x.flatten(2))))
        return self.fc1(x)
