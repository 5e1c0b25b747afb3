"""Spiking building blocks for spike-based BPTT (Lee et al. 2020), time-major ``[T, B, ...]``.

- :mod:`spiking.backend`: the one place that chooses which implementation runs the layers.
- :mod:`spiking.reference`: the algorithm one time step at a time (docs/algorithm.md); the
  readable reference every other implementation is tested against.
- :mod:`spiking.functional`: neuron dynamics over whole sequences and their approximate gradients.
- :mod:`spiking.neurons`: LIF, pooling IF and output-integrator modules.
- :mod:`spiking.synapses`: time-folded convolution and linear layers.
- :mod:`spiking.dropout`: dropout held over time.
- :mod:`spiking.encoding`: Poisson input encoding.
"""
from . import backend, functional
from .dropout import TimeHeldDropout
from .encoding import PoissonEncoder
from .neurons import LIFNeuron, OutputIntegrator, PoolingNeuron, reset_states
from .synapses import SpikingConv2d, SpikingLinear, TimeFolded

__all__ = [
    "backend",
    "functional",
    "LIFNeuron",
    "OutputIntegrator",
    "PoissonEncoder",
    "PoolingNeuron",
    "SpikingConv2d",
    "SpikingLinear",
    "TimeFolded",
    "TimeHeldDropout",
    "reset_states",
]
