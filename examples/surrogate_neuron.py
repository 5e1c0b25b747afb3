"""A surrogate gradient: LIF neurons whose derivative is a fast sigmoid of the membrane.

The paper's derivative, ``NG / theta`` at a neuron's spikes, needs only the spikes; the usual
surrogate gradients read the membrane potential ``u_t`` at every step. The class below keeps
``u_t`` for its backward (``keeps_potential``), sets the factor of ``spike_scale`` to 1, and
leaves ``grad_only_at_spikes`` off, since it reads the gradient at every step. The ``cpu`` and
``triton`` backends generate their fused scans from these methods.

The script trains LeNet with it for a few steps on the synthetic MNIST stand-in, then checks in
float64 that every parameter gradient equals per-step autograd on the ``reference`` backend, and
exits 1 if one does not.

    python examples/surrogate_neuron.py
"""
import sys

import torch

from examples.custom_neuron import check, train
from spiking import LIFNeuron


class FastSigmoidLIF(LIFNeuron):
    """A fast-sigmoid surrogate gradient, 1 / (1 + 10 |u - theta|)^2, instead of NG / theta."""

    keeps_potential = True

    def spike_scale(self, stats):
        return 1.0

    def backward_step(self, grad_spikes, grad_membrane, potential, scale):
        surrogate = 1.0 / (1.0 + 10.0 * (potential - self.threshold).abs()) ** 2
        spiked = potential > self.threshold
        return scale * surrogate * grad_spikes + torch.where(spiked, 0.0, grad_membrane)


if __name__ == "__main__":
    train(FastSigmoidLIF)
    sys.exit(0 if check(FastSigmoidLIF) else 1)
