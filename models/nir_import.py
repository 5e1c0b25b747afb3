"""A NIR graph as a network of this project's spiking modules: the inverse of
:func:`models.nir_graph.export_graph` (docs/nir.md, "Import").

:func:`import_graph` reads the graph's nodes back into ``SpikingConv2d``, ``SpikingLinear``,
``LIFNeuron``, ``PoolingNeuron`` and ``OutputIntegrator`` modules, wired as its edges say, with
the leaks and thresholds that forward Euler at :data:`~models.nir_graph.DT` implies. A graph this
project exported comes back bit for bit: the same outputs and spikes as the network it came from,
in its dtype. Modules are named after the nodes, so the state_dict keys are the original
network's (``cnn1.weight``, ``shortcut1.0.weight``).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import nir
import numpy as np
import torch
from torch import Tensor, nn

from spiking import (LIFNeuron, OutputIntegrator, PoolingNeuron, SpikingConv2d, SpikingLinear,
                     TimeFolded)

from .base import SpikingNetwork
from .nir_graph import DT, leak_of

__all__ = ["GraphNetwork", "import_graph"]

_GAIN_TOLERANCE = 1e-9  # relative; the exported gains are 1 (or l) to a few ulps
_SYNAPSES = (nir.Conv2d, nir.Linear, nir.Affine)
_WINDOWS = (nir.AvgPool2d, nir.SumPool2d)


def _uniform(node: nir.NIRNode, name: str, field: str) -> float:
    """The one value of ``node.<field>`` over all its neurons (this project's neuron layers
    share one threshold and one leak)."""
    values = np.unique(np.asarray(getattr(node, field), dtype=np.float64))
    if values.size != 1:
        raise ValueError(f"node {name}: {field} differs between neurons; this project's layers "
                         "share one value")
    return float(values[0])


def _check_gain(name: str, gain: float, expected: float) -> None:
    if not math.isclose(gain, expected, rel_tol=_GAIN_TOLERANCE):
        raise ValueError(f"node {name}: input gain {gain!r} per step at dt = {DT} s, but this "
                         f"project's neuron has {expected!r}")


def _check_zero(node: nir.NIRNode, name: str, *fields: str) -> None:
    for field in fields:
        if np.any(np.asarray(getattr(node, field)) != 0):
            raise ValueError(f"node {name}: {field} must be 0 for this project's neurons")


def _hidden_neuron(node: nir.NIRNode, name: str) -> tuple[float, float]:
    """``(threshold, leak)`` of a LIF or IF node whose Euler step is ``v = leak * v + I``."""
    if isinstance(node, nir.IF):
        _check_zero(node, name, "v_reset")
        _check_gain(name, _uniform(node, name, "r") * DT, 1.0)
        return _uniform(node, name, "v_threshold"), 1.0
    _check_zero(node, name, "v_reset", "v_leak")
    tau = _uniform(node, name, "tau")
    _check_gain(name, _uniform(node, name, "r") * DT / tau, 1.0)
    return _uniform(node, name, "v_threshold"), leak_of(tau)


def _output_leak(node: nir.NIRNode, name: str) -> float:
    """The leak l of an LI or I node whose Euler step is ``v = l * (v + I)``."""
    if isinstance(node, nir.I):
        _check_gain(name, _uniform(node, name, "r") * DT, 1.0)
        return 1.0
    _check_zero(node, name, "v_leak")
    tau = _uniform(node, name, "tau")
    leak = leak_of(tau)
    _check_gain(name, _uniform(node, name, "r") * DT / tau, leak)
    return leak


def _square(values: np.ndarray | int | Sequence[int], name: str, what: str) -> int:
    """The one int of a square kernel, stride or padding (this project's layers are square)."""
    values = np.atleast_1d(np.asarray(values))
    if values.dtype.kind not in "iu" or np.unique(values).size != 1:
        raise ValueError(f"node {name}: {what} {values.tolist()} is not one integer for both "
                         "sides")
    return int(values[0])


def _synapse(node: nir.NIRNode, name: str) -> nn.Module:
    weight = torch.from_numpy(np.array(node.weight))
    if np.any(np.asarray(getattr(node, "bias", 0)) != 0):
        raise ValueError(f"node {name}: a bias; this project's synapses have none")
    if isinstance(node, nir.Conv2d):
        if node.groups != 1 or _square(node.dilation, name, "dilation") != 1:
            raise ValueError(f"node {name}: grouped or dilated convolutions are not supported")
        if isinstance(node.padding, str):
            raise ValueError(f"node {name}: padding {node.padding!r}: give it in pixels")
        kernel = _square(weight.shape[2:], name, "kernel")
        module = SpikingConv2d(weight.shape[1], weight.shape[0], kernel,
                               _square(node.stride, name, "stride"),
                               _square(node.padding, name, "padding"))
    else:
        module = SpikingLinear(weight.shape[1], weight.shape[0])
    module.to(weight.dtype).weight.data.copy_(weight)
    return module


class TimeMajorFlatten(nn.Module):
    """NIR's ``Flatten`` on time-major values: its dims count from the first per-image dim,
    after ``[T, B]``."""

    def __init__(self, start_dim: int, end_dim: int) -> None:
        super().__init__()
        self.start_dim = start_dim + 2 if start_dim >= 0 else start_dim
        self.end_dim = end_dim + 2 if end_dim >= 0 else end_dim

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(self.start_dim, self.end_dim)


@dataclass
class _Step:
    """One module of the network: its name (a node's), the module, and the node names whose
    outputs sum to its input."""

    name: str
    module: nn.Module
    inputs: list[str]


class _Graph:
    """A NIR graph's nodes, edges and order, with what :func:`import_graph` asks of it."""

    def __init__(self, graph: nir.NIRGraph) -> None:
        self.nodes = dict(graph.nodes)
        self.inputs = {name: [a for a, b in graph.edges if b == name] for name in self.nodes}
        self.outputs = {name: [b for a, b in graph.edges if a == name] for name in self.nodes}
        self.input = self.only(nir.Input, "Input")
        self.output = self.only(nir.Output, "Output")
        self.order = self.topological_order()
        self.metadata = dict(graph.metadata or {})

    def only(self, node_type: type, what: str) -> str:
        names = [n for n, node in self.nodes.items() if isinstance(node, node_type)]
        if len(names) != 1:
            raise ValueError(f"the graph has {len(names)} {what} nodes; this project's networks "
                             "have one")
        return names[0]

    def topological_order(self) -> list[str]:
        """Every node after all its inputs (Kahn's algorithm, in the graph's node order)."""
        waiting = {name: len(self.inputs[name]) for name in self.nodes}
        ready = [name for name, count in waiting.items() if count == 0]
        order = []
        while ready:
            name = ready.pop(0)
            order.append(name)
            for successor in self.outputs[name]:
                waiting[successor] -= 1
                if waiting[successor] == 0:
                    ready.append(successor)
        if len(order) != len(self.nodes):
            raise ValueError("the graph has a cycle; this project's networks are feed-forward")
        return order

    def pooled_neuron(self, name: str) -> str | None:
        """The IF node that a pooling window ``name`` feeds alone, if any (a pooling neuron)."""
        successors = self.outputs[name]
        if (len(successors) == 1 and isinstance(self.nodes[successors[0]], nir.IF)
                and self.inputs[successors[0]] == [name]):
            return successors[0]
        return None


def _window(node: nir.NIRNode, name: str) -> tuple[int, int, int]:
    return (_square(node.kernel_size, name, "kernel"), _square(node.stride, name, "stride"),
            _square(node.padding, name, "padding"))


def _pooling_neuron(graph: _Graph, window: str, neuron: str) -> PoolingNeuron:
    """Window then IF -> :class:`PoolingNeuron`; a sum window's threshold back per average
    (exact when the window's size is a power of two, as 2x2)."""
    kernel, stride, padding = _window(graph.nodes[window], window)
    if stride != kernel or padding:
        raise ValueError(f"node {window}: a pooling neuron's window is k x k, stride k, no padding")
    threshold, _ = _hidden_neuron(graph.nodes[neuron], neuron)  # an IF: no leak
    if isinstance(graph.nodes[window], nir.SumPool2d):
        threshold /= kernel * kernel
    return PoolingNeuron(threshold, kernel)


def _plain_window(node: nir.NIRNode, name: str) -> TimeFolded:
    """A pool with no neuron after it (ResNet's 1x1 stride-2 shortcut); a sum pool is an average
    pool that divides by 1."""
    kernel, stride, padding = _window(node, name)
    divisor = 1 if isinstance(node, nir.SumPool2d) and kernel > 1 else None
    return TimeFolded(nn.AvgPool2d(kernel, stride, padding, divisor_override=divisor))


def _steps(graph: _Graph) -> tuple[list[_Step], OutputIntegrator, str]:
    """The network's modules in order, its output integrator, and the node feeding it."""
    (integrator,) = graph.inputs[graph.output]
    node = graph.nodes[integrator]
    if not isinstance(node, (nir.LI, nir.I)):
        raise ValueError(f"the output node reads {integrator} ({type(node).__name__}); this "
                         "project's networks end in a leaky integrator (LI or I)")
    (readout,) = graph.inputs[integrator]
    output = OutputIntegrator(_output_leak(node, integrator),
                              float(graph.metadata.get("output_threshold", 1.0)))
    steps, fused = [], {}
    for name in graph.order:
        node, inputs = graph.nodes[name], [fused.get(i, i) for i in graph.inputs[name]]
        if name in (graph.input, graph.output, integrator) or name in fused.values():
            continue
        neuron = graph.pooled_neuron(name) if isinstance(node, _WINDOWS) else None
        if neuron is not None:
            fused[name] = neuron
            steps.append(_Step(neuron, _pooling_neuron(graph, name, neuron), inputs))
        else:
            steps.append(_Step(name, _module(graph, name, inputs), inputs))
    return steps, output, fused.get(readout, readout)


def _module(graph: _Graph, name: str, inputs: list[str]) -> nn.Module:
    node = graph.nodes[name]
    if isinstance(node, _SYNAPSES):
        return _synapse(node, name)
    if isinstance(node, (nir.LIF, nir.IF)):
        threshold, leak = _hidden_neuron(node, name)
        # spikes may overwrite a current no other node reads: a sum, or one synapse's own
        (source,) = inputs if len(inputs) == 1 else (None,)
        inplace = source is None or (isinstance(graph.nodes[source], _SYNAPSES)
                                     and len(graph.outputs[source]) == 1)
        return LIFNeuron(threshold, leak, inplace=inplace)
    if isinstance(node, _WINDOWS):
        return _plain_window(node, name)
    if isinstance(node, nir.Flatten):
        return TimeMajorFlatten(int(node.start_dim), int(node.end_dim))
    raise ValueError(f"node {name}: {type(node).__name__} has no counterpart in this project")


def _shared(values: list[float]) -> float | None:
    return values[0] if values and all(v == values[0] for v in values) else None


class GraphNetwork(SpikingNetwork):
    """A network built by :func:`import_graph`: ``forward(spikes [T, B, C, H, W]) -> [B, K]``
    like the four networks (chunks of time steps, states reset per input), no dropout.

    ``leak``, ``threshold`` and ``pool_threshold`` are those all its hidden LIF (pooling)
    neurons share, or None where they differ or there are none.
    """

    def __init__(self, steps: list[_Step], output: OutputIntegrator, input_name: str,
                 readout: str, input_shape: tuple[int, int, int], num_classes: int) -> None:
        lifs = [s.module for s in steps if isinstance(s.module, LIFNeuron)]
        pools = [s.module.threshold for s in steps if isinstance(s.module, PoolingNeuron)]
        super().__init__(input_shape, num_classes, _shared([m.leak for m in lifs]),
                         _shared([m.threshold for m in lifs]), _shared(pools), 0.0)
        for step in steps:
            self._place(step.name, step.module)
        self.output = output
        self.steps, self.input_name, self.readout = steps, input_name, readout
        # how many steps read each value: forward_chunk frees a value once all have
        self.readers: dict[str, int] = {}
        for name in [i for s in steps for i in s.inputs] + [readout]:
            self.readers[name] = self.readers.get(name, 0) + 1

    def _place(self, path: str, module: nn.Module) -> None:
        """Register ``module`` at the dotted ``path`` (``shortcut1.0``), making containers."""
        *parents, leaf = path.split(".")
        owner: nn.Module = self
        for part in parents:
            if not hasattr(owner, part):
                owner.add_module(part, nn.Module())
            owner = getattr(owner, part)
        if hasattr(owner, leaf):
            raise ValueError(f"node name {path!r} clashes with another node's")
        owner.add_module(leaf, module)

    def forward_chunk(self, spikes: Tensor) -> Tensor:
        """``[T', B, C, H, W]`` input spikes -> output-layer current ``[T', B, K]``."""
        values, readers = {self.input_name: spikes}, dict(self.readers)
        for step in self.steps:
            current = None
            for name in step.inputs:  # several inputs: a residual sum
                current = values[name] if current is None else current + values[name]
                readers[name] -= 1
                if readers[name] == 0:
                    del values[name]
            values[step.name] = step.module(current)
        return values[self.readout]


def import_graph(graph: nir.NIRGraph | str | os.PathLike) -> GraphNetwork:
    """Build this project's network from a NIR graph (or a file ``nir.write`` wrote).

    The graph must use this project's vocabulary (docs/nir.md): ``Conv2d``/``Linear``
    without bias, ``LIF``/``IF`` with ``v_leak = v_reset = 0`` and unit input gain at
    dt = 1e-4 s, ``AvgPool2d``/``SumPool2d`` (followed by an ``IF``: a pooling neuron),
    ``Flatten``, and an ``LI`` or ``I`` before the ``Output``. The output threshold comes from
    the metadata ``output_threshold`` (1 if absent).

    Raises:
        ValueError: a node or structure this project cannot run, named in the message.
    """
    if not isinstance(graph, nir.NIRGraph):
        graph = nir.read(graph)
    parsed = _Graph(graph)
    steps, output, readout = _steps(parsed)
    input_shape = tuple(int(n) for n in parsed.nodes[parsed.input].input_type["input"])
    num_classes = int(np.prod(parsed.nodes[parsed.output].output_type["output"]))
    return GraphNetwork(steps, output, parsed.input, readout, input_shape, num_classes)
