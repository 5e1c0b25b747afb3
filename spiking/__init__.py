"""Spiking building blocks for spike-based BPTT (Lee et al. 2020), time-major ``[T, B, ...]``.

- :mod:`spiking.functional`: pure neuron dynamics and their custom approximate gradients.
- :mod:`spiking.neurons`: LIF, pooling IF and output-integrator modules.
- :mod:`spiking.synapses`: time-folded convolution and linear layers.
- :mod:`spiking.dropout`: dropout held over time.
- :mod:`spiking.encoding`: Poisson input encoding.
"""
from . import functional
from .dropout import TimeHeldDropout
from .encoding import PoissonEncoder
from .neurons import LIFNeuron, OutputIntegrator, PoolingNeuron
from .synapses import SpikingConv2d, SpikingLinear, TimeFolded

__all__ = [
    "functional",
    "LIFNeuron",
    "OutputIntegrator",
    "PoissonEncoder",
    "PoolingNeuron",
    "SpikingConv2d",
    "SpikingLinear",
    "TimeFolded",
    "TimeHeldDropout",
]
