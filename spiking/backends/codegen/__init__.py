"""Fused scans generated from a neuron's own methods, for the ``cpu`` (C) and ``triton``
backends.

A neuron is written once, in Python (:mod:`spiking.neurons`). For a fused backend, its step
methods are traced into elementwise programs (:mod:`.trace`, :mod:`.aten`, :mod:`.program`),
assembled into the forward, evaluation and backward scans of a chunk of time steps
(:mod:`.neuron_scan`, :mod:`.kernel`), and emitted as C (:mod:`.c_source`) or Triton
(:mod:`.triton_source`) source; :mod:`.scans` runs them. A method that cannot be traced so
raises :class:`NotFusable`, and the neuron runs on the ``torch`` backend.
"""
from .aten import NotFusable
from .c_source import c_source
from .kernel import Kernel
from .neuron_scan import NeuronScan, neuron_key, neuron_refusal, neuron_scan
from .scans import FusedRecord, Launch, integrate, scan_backward, scan_forward
from .triton_source import triton_source

__all__ = ["FusedRecord", "Kernel", "Launch", "NeuronScan", "NotFusable", "c_source", "integrate",
           "neuron_key", "neuron_refusal", "neuron_scan", "scan_backward", "scan_forward",
           "triton_source"]
