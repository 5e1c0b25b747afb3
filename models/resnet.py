"""ResNet11 for CIFAR-10 and our ResNet13 for SVHN (docs/algorithm.md, *Architectures*).

In every residual block the shortcut's current is added to the membrane input of the block's
second LIF layer; the shortcut reads the block's input spikes.
"""
from __future__ import annotations

from torch import Tensor, nn

from spiking import LIFNeuron, OutputIntegrator, SpikingConv2d, SpikingLinear, TimeFolded

from .base import (NeuronFactory, SpikingNetwork, conv3x3, halved_by_pooling, halved_by_stride,
                   scaled)

__all__ = ["ResNet11", "ResNet13"]


class ResNet11(SpikingNetwork):
    """The authors' spiking ResNet11.

    | layer                     | shape                        | shortcut                  |
    |---------------------------|------------------------------|---------------------------|
    | cnn11, pool1              | 3->64, 32x32 -> 16x16        |                           |
    | block1: cnn21, cnn22      | 64->128, 128->128            | shortcut1.0: 1x1 64->128  |
    | block2: cnn31, cnn32 (s2) | 128->256, 256->256, 16 -> 8  | shortcut2.0: 1x1 s2       |
    | block3: cnn41, cnn42      | 256->512, 512->512           | shortcut3.0: 1x1 256->512 |
    | block4: cnn51, cnn52 (s2) | 512->512, 512->512, 8 -> 4   | shortcut4: AvgPool(1, s2) |
    | fc0, fc1                  | 8192->1024, 1024->10         |                           |

    Dropout (p = ``dropout``, 0.25 in the authors' runs) follows every hidden LIF layer; the
    pooled spikes feeding block 1 are not masked. On other image sizes the strided layers give
    ceil(side / 2), e.g. 28 -> 14 -> 7 -> 4 for MNIST.

    Args: as :class:`models.VGG9`.
    """

    init_gain = 1.0

    def __init__(self, num_classes: int = 10, leak: float = 0.99, threshold: float = 1.0,
                 pool_threshold: float = 0.75, dropout: float = 0.25, width: float = 1.0,
                 input_shape: tuple[int, int, int] = (3, 32, 32),
                 neuron: NeuronFactory = LIFNeuron) -> None:
        super().__init__(input_shape, num_classes, leak, threshold, pool_threshold, dropout,
                         neuron)
        in_channels, image_height, image_width = input_shape
        c1, c2, c3, c4, f0 = (scaled(c, width) for c in (64, 128, 256, 512, 1024))

        self.cnn11, self.lif11, self.drop11 = self.hidden(conv3x3(in_channels, c1))
        self.pool1 = self.pooling_neuron()

        self.cnn21, self.lif21, self.drop21 = self.hidden(conv3x3(c1, c2))
        self.cnn22, self.lif22, self.drop22 = self.hidden(conv3x3(c2, c2))
        self.shortcut1 = nn.Sequential(SpikingConv2d(c1, c2, 1))

        self.cnn31, self.lif31, self.drop31 = self.hidden(conv3x3(c2, c3))
        self.cnn32, self.lif32, self.drop32 = self.hidden(conv3x3(c3, c3, 2))
        self.shortcut2 = nn.Sequential(SpikingConv2d(c2, c3, 1, stride=2))

        self.cnn41, self.lif41, self.drop41 = self.hidden(conv3x3(c3, c4))
        self.cnn42, self.lif42, self.drop42 = self.hidden(conv3x3(c4, c4))
        self.shortcut3 = nn.Sequential(SpikingConv2d(c3, c4, 1))

        self.cnn51, self.lif51, self.drop51 = self.hidden(conv3x3(c4, c4))
        self.cnn52, self.lif52, self.drop52 = self.hidden(conv3x3(c4, c4, 2))
        self.shortcut4 = TimeFolded(nn.AvgPool2d(kernel_size=1, stride=2))
        self.build_more_blocks(c4)

        fc0_height, fc0_width = (halved_by_stride(halved_by_stride(halved_by_pooling(side)))
                                 for side in (image_height, image_width))
        fc0_inputs = self.fc0_inputs(c4, fc0_height, fc0_width)
        self.fc0, self.lif_fc0, self.drop_fc0 = self.hidden(SpikingLinear(fc0_inputs, f0))
        self.fc1 = SpikingLinear(f0, num_classes)
        self.output = OutputIntegrator(leak, threshold)
        self.reset_parameters()

    def build_more_blocks(self, channels: int) -> None:
        """Residual blocks after block 4, of ``channels`` each (a deeper network's): none."""

    def features(self, spikes: Tensor) -> Tensor:
        """``[T', B, C, H, W]`` input spikes -> block 4's output spikes
        ``[T', B, 512, H', W']`` (H' = W' = 4 for 28x28 and 32x32 images)."""
        x = self.pool1(self.drop11(self.lif11(self.cnn11(spikes))))
        h = self.drop21(self.lif21(self.cnn21(x)))
        x = self.drop22(self.lif22(self.cnn22(h) + self.shortcut1(x)))
        h = self.drop31(self.lif31(self.cnn31(x)))
        x = self.drop32(self.lif32(self.cnn32(h) + self.shortcut2(x)))
        h = self.drop41(self.lif41(self.cnn41(x)))
        x = self.drop42(self.lif42(self.cnn42(h) + self.shortcut3(x)))
        h = self.drop51(self.lif51(self.cnn51(x)))
        return self.drop52(self.lif52(self.cnn52(h) + self.shortcut4(x)))

    def forward_chunk(self, spikes: Tensor) -> Tensor:
        x = self.drop_fc0(self.lif_fc0(self.fc0(self.features(spikes).flatten(2))))
        return self.fc1(x)


class ResNet13(ResNet11):
    """Our ResNet13 for SVHN (not in the authors' code): ResNet11 plus block 5 before fc0.

    | block5: cnn61, cnn62 | 512->512, 512->512, stride 1 | shortcut5: identity |

    Args: as :class:`ResNet11`.
    """

    def build_more_blocks(self, channels: int) -> None:
        self.cnn61, self.lif61, self.drop61 = self.hidden(conv3x3(channels, channels))
        self.cnn62, self.lif62, self.drop62 = self.hidden(conv3x3(channels, channels))
        # a module, not a bare "+ x", so that --stats counts the additions it causes
        self.shortcut5 = TimeFolded(nn.Identity())

    def features(self, spikes: Tensor) -> Tensor:
        x = super().features(spikes)
        h = self.drop61(self.lif61(self.cnn61(x)))
        return self.drop62(self.lif62(self.cnn62(h) + self.shortcut5(x)))
