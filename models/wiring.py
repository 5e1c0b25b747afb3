"""What feeds each synapse of a network, read from the network's own ``forward_chunk``.

Two properties of a synapse's input decide how its kernels may run (``spiking/synapses.py``):

- ``input_spikes``: the input holds only ``-c, 0, c`` for one c, so the backward keeps it as
  int8 codes. True when the input is the network's input (input spikes, by the contract of
  :meth:`~models.SpikingNetwork.forward`) or a layer of spiking neurons' output (0 or 1).
- ``input_from_neurons``: the input is spiking neurons' output and their ``backward_step`` reads
  its gradient only at their spikes (``SpikingNeuron.gradient_only_at_spikes``), so an
  event-driven backward may leave the input gradient 0 where nothing spiked.

Dropout (:class:`~spiking.TimeHeldDropout`), identities and reshapes between the two keep both
properties: they scale or move spikes, and their backward masks the gradient the same way. The
wiring is traced with ``torch.fx``, this project's spiking modules kept whole; a network whose
``forward_chunk`` cannot be traced (data-dependent Python control flow) keeps what its
constructor declared (:meth:`~models.SpikingNetwork.inputs_from_neurons`).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from spiking import SpikingConv2d, SpikingLinear, SpikingNeuron, TimeFolded, TimeHeldDropout

__all__ = ["ChunkTracer", "InputKind", "TracedChunk", "derive_synapse_inputs",
           "synapse_inputs"]

# kept whole by the tracer: each is one call_module node
LEAVES = (SpikingConv2d, SpikingLinear, SpikingNeuron, TimeFolded, TimeHeldDropout)
# modules and tensor methods whose output holds their input's values, moved or scaled
_KEEP_SPIKES = (TimeHeldDropout, nn.Identity)
_RESHAPES = {"flatten", "view", "reshape", "contiguous", "unflatten"}


class ChunkTracer(torch.fx.Tracer):
    """Keeps this project's spiking modules whole: each becomes one ``call_module`` node."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, LEAVES) or super().is_leaf_module(module, qualified_name)


class TracedChunk(nn.Module):
    """``forward`` = the network's ``forward_chunk``: what the tracer follows. The network's
    modules are named ``net.<name>`` in the graph."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.net = network

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        return self.net.forward_chunk(spikes)


@dataclass(frozen=True)
class InputKind:
    """What one synapse reads: spikes (``input_spikes``), from neurons that read their
    gradient only at their spikes (``input_from_neurons``)."""

    spikes: bool
    from_neurons: bool

    def __and__(self, other: InputKind) -> InputKind:
        return InputKind(self.spikes and other.spikes, self.from_neurons and other.from_neurons)


def _producer(node: torch.fx.Node, modules: dict[str, nn.Module]) -> torch.fx.Node:
    """The node that made ``node``'s values, past dropout, identities and reshapes."""
    while True:
        if node.op == "call_module" and isinstance(modules[node.target], _KEEP_SPIKES):
            node = node.args[0]
        elif node.op == "call_method" and node.target in _RESHAPES:
            node = node.args[0]
        elif node.op == "call_function" and node.target in (torch.flatten, torch.reshape):
            node = node.args[0]
        else:
            return node


def _kind(node: torch.fx.Node, modules: dict[str, nn.Module]) -> InputKind:
    """What a synapse reading ``node`` reads."""
    source = _producer(node, modules)
    if source.op == "placeholder":  # the network's input: spikes, but from no neuron
        return InputKind(spikes=True, from_neurons=False)
    if source.op == "call_module" and isinstance(modules[source.target], SpikingNeuron):
        return InputKind(True, type(modules[source.target]).gradient_only_at_spikes())
    return InputKind(False, False)  # a current, a sum, an operation the tracer cannot see into


def synapse_inputs(network: nn.Module) -> dict[nn.Module, InputKind] | None:
    """What each synapse that ``network.forward_chunk`` calls reads (a synapse called twice:
    what both calls have in common); None if ``forward_chunk`` cannot be traced."""
    root = TracedChunk(network)
    try:
        graph = ChunkTracer().trace(root)
    except Exception:  # noqa: BLE001 -- any failure to trace leaves the declarations to decide
        return None
    modules = dict(root.named_modules())
    found: dict[nn.Module, InputKind] = {}
    for node in _synapse_calls(graph, modules):
        synapse = modules[node.target]
        kind = _kind(node.args[0], modules)
        found[synapse] = found[synapse] & kind if synapse in found else kind
    return found


def _synapse_calls(graph: torch.fx.Graph, modules: dict[str, nn.Module]
                   ) -> Iterator[torch.fx.Node]:
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target],
                                                   (SpikingConv2d, SpikingLinear)):
            yield node


def derive_synapse_inputs(network: nn.Module) -> bool:
    """Set ``input_spikes`` and ``input_from_neurons`` of every synapse the trace can tell,
    keeping a declared True (what the trace cannot see it leaves to the declaration); whether
    ``forward_chunk`` could be traced."""
    found = synapse_inputs(network)
    for synapse, kind in (found or {}).items():
        synapse.input_spikes = synapse.input_spikes or kind.spikes
        synapse.input_from_neurons = synapse.input_from_neurons or kind.from_neurons
    return found is not None
