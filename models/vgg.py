"""VGG9 for CIFAR-10 (docs/algorithm.md, *Architectures*)."""
from __future__ import annotations

from torch import Tensor

from spiking import LIFNeuron, OutputIntegrator, SpikingLinear

from .base import NeuronFactory, SpikingNetwork, conv3x3, halved_by_pooling, scaled

__all__ = ["VGG9"]


class VGG9(SpikingNetwork):
    """Seven 3x3 convolutions in three stages, two fc layers; dropout after every hidden LIF layer.

    | layer        | shape          |
    |--------------|----------------|
    | cnn11, cnn12 | 3->64, 64->64  |
    | pool1        | 32x32 -> 16x16 |
    | cnn21, cnn22 | 64->128, 128->128 |
    | pool2        | 16 -> 8        |
    | cnn31..cnn33 | 128->256, 256->256, 256->256 |
    | pool3        | 8 -> 4         |
    | fc0, fc1     | 4096->1024, 1024->10 |

    Args: as :class:`models.LeNet`; ``dropout`` is p of every dropout module (0.2 in the
    authors' runs).
    """

    init_gain = 2.0

    def __init__(self, num_classes: int = 10, leak: float = 0.99, threshold: float = 1.0,
                 pool_threshold: float = 0.75, dropout: float = 0.2, width: float = 1.0,
                 input_shape: tuple[int, int, int] = (3, 32, 32),
                 neuron: NeuronFactory = LIFNeuron) -> None:
        super().__init__(input_shape, num_classes, leak, threshold, pool_threshold, dropout,
                         neuron)
        in_channels, image_height, image_width = input_shape
        c1, c2, c3, f0 = (scaled(c, width) for c in (64, 128, 256, 1024))

        self.cnn11, self.lif11, self.drop11 = self.hidden(conv3x3(in_channels, c1))
        self.cnn12, self.lif12, self.drop12 = self.hidden(conv3x3(c1, c1))
        self.pool1 = self.pooling_neuron()
        self.cnn21, self.lif21, self.drop21 = self.hidden(conv3x3(c1, c2))
        self.cnn22, self.lif22, self.drop22 = self.hidden(conv3x3(c2, c2))
        self.pool2 = self.pooling_neuron()
        self.cnn31, self.lif31, self.drop31 = self.hidden(conv3x3(c2, c3))
        self.cnn32, self.lif32, self.drop32 = self.hidden(conv3x3(c3, c3))
        self.cnn33, self.lif33, self.drop33 = self.hidden(conv3x3(c3, c3))
        self.pool3 = self.pooling_neuron()
        fc0_height, fc0_width = (halved_by_pooling(halved_by_pooling(halved_by_pooling(side)))
                                 for side in (image_height, image_width))
        fc0_inputs = self.fc0_inputs(c3, fc0_height, fc0_width)
        self.fc0, self.lif_fc0, self.drop_fc0 = self.hidden(SpikingLinear(fc0_inputs, f0))
        self.fc1 = SpikingLinear(f0, num_classes)
        self.output = OutputIntegrator(leak, threshold)
        self.reset_parameters()

    def forward_chunk(self, spikes: Tensor) -> Tensor:
        x = self.drop11(self.lif11(self.cnn11(spikes)))
        x = self.drop12(self.lif12(self.cnn12(x)))
        x = self.pool1(x)
        x = self.drop21(self.lif21(self.cnn21(x)))
        x = self.drop22(self.lif22(self.cnn22(x)))
        x = self.pool2(x)
        x = self.drop31(self.lif31(self.cnn31(x)))
        x = self.drop32(self.lif32(self.cnn32(x)))
        x = self.drop33(self.lif33(self.cnn33(x)))
        x = self.pool3(x)
        x = self.drop_fc0(self.lif_fc0(self.fc0(x.flatten(2))))
        return self.fc1(x)
