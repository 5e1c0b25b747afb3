"""A neuron with a learnable parameter: LIF neurons whose leak trains (PLIF, Fang et al. 2021).

The paper's LIF neuron leaks by a fixed ``l = 0.99`` per step. Here each layer learns its own
leak ``l = sigmoid(w)`` (one ``w`` per layer, or per channel): ``w`` is an ``nn.Parameter`` of
the neuron, so the optimizer trains it with the weights, and its gradient is exact for the
neuron's own equations (autograd through ``reset``) with the authors' derivative at the spikes.
The fused ``cpu`` and ``triton`` scans are generated from these methods, the parameter's
gradient included.

The script trains LeNet with it for a few steps on the synthetic MNIST stand-in, prints the
leaks it learned, then checks in float64 that every gradient, the leaks' included, equals
per-step autograd on the ``reference`` backend, and exits 1 if one does not.

    python examples/plif_neuron.py
"""
import math
import sys

import torch
from torch import nn

from examples.custom_neuron import check, train
from spiking import LIFNeuron, leak_correction


class PLIFNeuron(LIFNeuron):
    """LIF neurons with a learned leak ``l = sigmoid(w)``: ``m_t = l r_t``, ``r_t`` the hard reset.

    The backward's leak correction NG uses the learned leak too (without a gradient through
    it, as NG has none in the paper).

    Args:
        threshold, leak, inplace: as :class:`LIFNeuron`; ``leak`` is the starting value.
        channels: one leak per channel of ``[B, channels, H, W]`` steps; None: one per layer.
    """

    def __init__(self, threshold: float = 1.0, leak: float = 0.99, inplace: bool = False,
                 channels: int | None = None) -> None:
        super().__init__(threshold, leak, inplace)
        shape = () if channels is None else (channels, 1, 1)
        self.leak_logit = nn.Parameter(torch.full(shape, math.log(leak / (1 - leak))))

    def learned_leak(self) -> torch.Tensor:
        return torch.sigmoid(self.leak_logit)

    def reset(self, potential, spikes):
        return self.learned_leak() * torch.where(spikes, 0.0, potential)

    def update_stats(self, stats, spikes):
        trace, count = stats
        trace.mul_(self.learned_leak().detach()).add_(spikes)
        count.add_(spikes)

    def spike_scale(self, stats):
        trace, count = stats
        return leak_correction(trace, count, self.learned_leak().detach()) / self.threshold


if __name__ == "__main__":
    model = train(PLIFNeuron)
    leaks = {name.rsplit(".", 1)[0]: round(torch.sigmoid(w).item(), 5)
             for name, w in model.named_parameters() if name.endswith("leak_logit")}
    print(f"learned leaks (from 0.99): {leaks}")
    sys.exit(0 if check(PLIFNeuron) else 1)
