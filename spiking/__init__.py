"""Spiking building blocks for spike-based BPTT (Lee et al. 2020), time-major ``[T, B, ...]``.

- :mod:`spiking.neurons`: the neurons, each written once (charge, fire, reset and the
  approximate derivative's backward step): LIF, IF, pooling neuron, output integrator.
- :mod:`spiking.synapses`: convolution and linear layers over spike trains.
- :mod:`spiking.dropout`: dropout held over time. :mod:`spiking.encoding`: Poisson input.
- :mod:`spiking.functional`: the layers over sequences of time steps, with the approximate
  gradient as custom autograd.
- :mod:`spiking.backends`: the one place that chooses which kernels run them (``reference``,
  ``torch``, ``cpu``, ``triton``).
"""
from . import backends, functional
from .dropout import TimeHeldDropout
from .encoding import PoissonEncoder
from .neurons import (IFNeuron, LIFNeuron, OutputIntegrator, PoolingNeuron, SpikingNeuron,
                      leak_correction, reset_states)
from .synapses import SpikingConv2d, SpikingLinear, TimeFolded

__all__ = [
    "backends",
    "functional",
    "IFNeuron",
    "LIFNeuron",
    "OutputIntegrator",
    "PoissonEncoder",
    "PoolingNeuron",
    "SpikingConv2d",
    "SpikingLinear",
    "SpikingNeuron",
    "TimeFolded",
    "TimeHeldDropout",
    "leak_correction",
    "reset_states",
]
