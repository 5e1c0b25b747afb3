"""LeNet for MNIST (SPEC section 8)."""
from __future__ import annotations

from torch import Tensor

from spiking import OutputIntegrator, SpikingConv2d, SpikingLinear

from .base import SpikingNetwork, scaled

__all__ = ["LeNet"]


class LeNet(SpikingNetwork):
    """cnn1 5x5 1->20, pool, cnn2 5x5 20->50, pool, fc0 2450->200, fc1 200->10 (no dropout).

    Args:
        num_classes: outputs of fc1.
        leak: leak of every LIF neuron and of the output integrator.
        threshold: threshold of the hidden LIF neurons and the output scaling.
        pool_threshold: threshold of the pooling neurons.
        width: multiplies every hidden width (1 = the paper's network).
        input_shape: ``(C, H, W)`` of the input images; H and W divisible by 4.
    """

    init_gain = 2.0
    cpu_chunk_images = 128  # its layers are small: 4 steps at batch 32 beat 2 by 8 %

    def __init__(self, num_classes: int = 10, leak: float = 0.99, threshold: float = 1.0,
                 pool_threshold: float = 0.75, width: float = 1.0,
                 input_shape: tuple[int, int, int] = (1, 28, 28)) -> None:
        super().__init__(input_shape, num_classes, leak, threshold, pool_threshold, dropout=0.0)
        in_channels, height, width_px = input_shape
        c1, c2, f0 = scaled(20, width), scaled(50, width), scaled(200, width)

        self.cnn1 = SpikingConv2d(in_channels, c1, 5, padding=2)
        self.lif1 = self.lif()
        self.pool1 = self.pooling_neuron()
        self.cnn2 = SpikingConv2d(c1, c2, 5, padding=2)
        self.lif2 = self.lif()
        self.pool2 = self.pooling_neuron()
        self.fc0 = SpikingLinear(c2 * (height // 4) * (width_px // 4), f0)
        self.lif_fc0 = self.lif()
        self.fc1 = SpikingLinear(f0, num_classes)
        self.output = OutputIntegrator(leak, threshold)
        self.inputs_from_neurons(self.cnn2, self.fc0, self.fc1)
        self.reset_parameters()

    def steps(self, spikes: Tensor) -> Tensor:
        x = self.pool1(self.lif1(self.cnn1(spikes)))
        x = self.pool2(self.lif2(self.cnn2(x)))
        x = self.lif_fc0(self.fc0(x.flatten(2)))
        return self.fc1(x)
