"""A trained network as a NIR graph (Neuromorphic Intermediate Representation, the ``nir``
package, 1.0): the exchange format neuromorphic simulators and hardware toolchains read.

The graph is derived from the network's own :meth:`~models.SpikingNetwork.forward_chunk` (traced
with ``torch.fx``, this project's spiking modules kept whole), so it follows any change to the
architectures. docs/nir.md states the mapping and why it is exact:

| module                          | NIR node(s)                                           |
|---------------------------------|-------------------------------------------------------|
| ``SpikingConv2d`` / ``SpikingLinear`` | ``Conv2d`` (zero bias) / ``Linear``             |
| ``LIFNeuron`` (leak l < 1)      | ``LIF(tau = dt/(1-l), r = tau/dt, v_leak = 0, v_reset = 0)`` |
| ``LIFNeuron`` (l = 1)           | ``IF(r = 1/dt, v_reset = 0)``                          |
| ``PoolingNeuron``               | ``AvgPool2d`` (or ``SumPool2d``) then ``IF(r = 1/dt)`` |
| ``OutputIntegrator``            | ``LI(tau = dt/(1-l), r = l*tau/dt, v_leak = 0)``; l = 1: ``I`` |
| ``TimeFolded(AvgPool2d)``       | ``AvgPool2d`` (or ``SumPool2d``)                       |
| ``TimeHeldDropout``, identities | nothing: an edge                                      |
| ``a + b`` (residual current)    | two edges into one node                               |
| ``x.flatten(2)``                | ``Flatten(start_dim = 0)``                            |

Neuron parameters are float64 arrays of the layer's shape ``(C, H, W)`` or ``(F,)``; weights keep
the network's dtype. :mod:`models.nir_import` builds a network back from such a graph.
"""
from __future__ import annotations

import math
import operator
from fractions import Fraction
from collections.abc import Iterator, Mapping
from typing import Any

import nir
import numpy as np
import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from spiking import (
    LIFNeuron,
    OutputIntegrator,
    PoolingNeuron,
    SpikingConv2d,
    SpikingLinear,
    SpikingNeuron,
    TimeFolded,
    TimeHeldDropout,
    reset_states,
)

from .base import SpikingNetwork
from .wiring import ChunkTracer, TracedChunk

__all__ = ["DT", "POOL_VARIANTS", "export_graph", "leak_of", "time_constant"]

DT = 1e-4
"""Seconds per time step: the graph's neurons are continuous in time, and forward Euler at this
step gives exactly the authors' per-step update (snnTorch's importer and exporter assume it)."""

POOL_VARIANTS = ("avg", "sum")

INPUT, OUTPUT, INTEGRATOR = "input", "output", "integrator"

_PASS_THROUGH = (TimeHeldDropout, nn.Identity)  # identity at inference

# The conventions a reader of the file needs to run it as trained (docs/nir.md, "The mapping").
SEMANTICS = {
    "dt": DT,
    "integration": "forward Euler at dt: LIF/LI v <- v + dt/tau * (v_leak - v + r * I), IF/I "
                   "v <- v + dt * r * I; I = the sum of the node's inputs at that step, a spike "
                   "counting 1 for its one step",
    "spike": "strict threshold: a neuron spikes at the step where v > v_threshold and is set to "
             "v_reset (0) in that same step; the next step integrates from there",
    "readout": "after T steps of the same input, prediction = argmax of the output node; the "
               "trained network's output value = output node / (output_threshold * T)",
}


def time_constant(leak: float) -> float:
    """tau = dt / (1 - leak), from which :func:`leak_of` gives back exactly ``leak`` for every
    leak in [0.5, 1); below 0.5 that takes a nudge of a few ulps for some leaks and is impossible
    for others (then the nearest tau)."""
    if not 0 < leak < 1:
        raise ValueError(f"a leaky neuron needs 0 < leak < 1, got {leak}")
    tau = DT / (1 - leak)
    for candidate in _neighbours(tau):
        if leak_of(candidate) == leak:
            return candidate
    return tau


def _neighbours(value: float, ulps: int = 64) -> Iterator[float]:
    """``value``, then the floats 1, 2, ... ``ulps`` steps above and below it."""
    yield value
    up = down = value
    for _ in range(ulps):
        up, down = math.nextafter(up, math.inf), math.nextafter(down, 0.0)
        yield up
        yield down


def leak_of(tau: float) -> float:
    """The per-step leak ``1 - dt / tau`` that forward Euler at :data:`DT` gives a time
    constant ``tau``, computed exactly and rounded once (plain float arithmetic rounds twice
    and can miss the leak by an ulp)."""
    return float(1 - Fraction(DT) / Fraction(tau))


def _full(shape: tuple[int, ...], value: float) -> np.ndarray:
    return np.full(shape, value, dtype=np.float64)


def _spiking_node(threshold: float, leak: float, shape: tuple[int, ...]) -> nir.NIRNode:
    """LIF neurons (IF for leak 1) whose Euler step at dt is ``v = leak * v + I``, with the
    strict threshold and the reset to 0 of the authors' neurons."""
    zeros = _full(shape, 0.0)
    if leak == 1:
        return nir.IF(r=_full(shape, 1 / DT), v_threshold=_full(shape, threshold), v_reset=zeros)
    tau = time_constant(leak)
    return nir.LIF(tau=_full(shape, tau), r=_full(shape, tau / DT), v_leak=zeros,
                   v_threshold=_full(shape, threshold), v_reset=zeros)


def _integrator_node(output: OutputIntegrator, shape: tuple[int, ...]) -> nir.NIRNode:
    """The output layer ``M <- l * (M + I)``: LI with input gain ``dt * r / tau = l`` (the
    authors' leak also scales the step's input), or I for l = 1."""
    if output.leak == 1:
        return nir.I(r=_full(shape, 1 / DT))
    tau = time_constant(output.leak)
    return nir.LI(tau=_full(shape, tau), r=_full(shape, output.leak * tau / DT),
                  v_leak=_full(shape, 0.0))


def _window_node(kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                 pool: str) -> nir.NIRNode:
    node_type = nir.SumPool2d if pool == "sum" else nir.AvgPool2d
    return node_type(kernel_size=np.array(kernel), stride=np.array(stride),
                     padding=np.array(padding))


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _average_pool_node(pool_module: nn.AvgPool2d, pool: str) -> nir.NIRNode:
    """A time-folded ``nn.AvgPool2d`` (ResNet's 1x1 stride-2 shortcut). With ``pool='sum'``
    only a 1x1 window has nothing to fold."""
    kernel = _pair(pool_module.kernel_size)
    stride = _pair(pool_module.stride or pool_module.kernel_size)
    padding = _pair(pool_module.padding)
    if pool_module.ceil_mode or any(padding) or pool_module.divisor_override:
        raise ValueError(f"cannot export {pool_module}: only unpadded floor-mode average pools")
    if pool == "sum" and kernel != (1, 1):
        raise ValueError(f"cannot export {pool_module} as a sum pool: no neuron follows it to "
                         "take the 1/(kh*kw)")
    return _window_node(kernel, stride, padding, pool)


def _traced(model: SpikingNetwork) -> torch.fx.GraphModule:
    """``model.forward_chunk`` as an fx graph whose nodes carry their ``[T, B, ...]`` shapes
    (from one step of one all-zero image)."""
    wrapper = TracedChunk(model)
    traced = torch.fx.GraphModule(wrapper, ChunkTracer().trace(wrapper))
    weight = next(model.parameters())
    sample = torch.zeros((1, 1, *model.input_shape), dtype=weight.dtype, device=weight.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(traced).propagate(sample)
    finally:
        reset_states(model)
        model.train(was_training)
    return traced


def _step_shape(node: torch.fx.Node) -> tuple[int, ...]:
    """Shape of one image at one step of the value ``node`` computes (``[T, B, ...]`` less T, B)."""
    return tuple(node.meta["tensor_meta"].shape[2:])


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().copy()


class _GraphBuilder:
    """Walks the traced ``forward_chunk`` and collects NIR nodes and edges. ``sources[v]`` are
    the NIR nodes whose outputs sum to the fx value ``v`` (two for a residual current)."""

    def __init__(self, model: SpikingNetwork, pool: str) -> None:
        self.model, self.pool = model, pool
        self.nodes: dict[str, nir.NIRNode] = {INPUT: nir.Input(np.array(model.input_shape))}
        self.edges: list[tuple[str, str]] = []
        self.sources: dict[torch.fx.Node, list[str]] = {}

    def add(self, name: str, node: nir.NIRNode, inputs: list[str]) -> None:
        if name in self.nodes:
            raise ValueError(f"two NIR nodes would be named {name!r}")
        self.nodes[name] = node
        self.edges += [(source, name) for source in inputs]

    def visit(self, node: torch.fx.Node) -> None:
        if node.op == "placeholder":
            self.sources[node] = [INPUT]
        elif node.op == "call_module":
            self.visit_module(node)
        elif (node.op, node.target) in (("call_method", "flatten"),
                                        ("call_function", torch.flatten)):
            self.visit_flatten(node)
        elif node.op == "call_function" and node.target in (operator.add, torch.add):
            left, right = node.args  # a residual block: the shortcut's current joins the conv's
            self.sources[node] = self.sources[left] + self.sources[right]
        elif node.op == "output":
            self.finish(node.args[0])
        else:
            raise ValueError(f"cannot export the operation {node.format_node()} to NIR")

    def visit_flatten(self, node: torch.fx.Node) -> None:
        arguments = {**dict(zip(("start_dim", "end_dim"), node.args[1:])), **node.kwargs}
        start, end = arguments.get("start_dim", 0), arguments.get("end_dim", -1)
        if start < 2 or 0 <= end < 2:
            raise ValueError(f"cannot export {node.format_node()}: it flattens time or batch")
        source = node.args[0]
        self.add(node.name, nir.Flatten(input_type=np.array(_step_shape(source)),
                                        start_dim=start - 2, end_dim=end - 2 if end >= 0 else end),
                 self.sources[source])
        self.sources[node] = [node.name]

    def visit_module(self, node: torch.fx.Node) -> None:
        name = node.target.removeprefix("net.")
        module = self.model.get_submodule(name)
        (source,) = node.args
        inputs = self.sources[source]
        if isinstance(module, _PASS_THROUGH) or (isinstance(module, TimeFolded)
                                                 and isinstance(module.module, nn.Identity)):
            self.sources[node] = inputs
            return
        for node_name, nir_node in self.module_nodes(module, name, source, node):
            self.add(node_name, nir_node, inputs)
            inputs = [node_name]
        self.sources[node] = inputs

    def module_nodes(self, module: nn.Module, name: str, source: torch.fx.Node,
                     node: torch.fx.Node) -> list[tuple[str, nir.NIRNode]]:
        """The NIR nodes (in order, each feeding the next) of one of the network's modules."""
        if isinstance(module, SpikingConv2d):
            return [(name, nir.Conv2d(
                input_shape=_step_shape(source)[1:], weight=_numpy(module.weight),
                stride=np.array(module.stride), padding=np.array(module.padding),
                dilation=np.array(module.dilation), groups=module.groups,
                bias=np.zeros(module.out_channels, dtype=_numpy(module.weight).dtype)))]
        if isinstance(module, SpikingLinear):
            return [(name, nir.Linear(weight=_numpy(module.weight)))]
        # exactly the paper's neurons: a subclass may change the equations NIR is given
        if type(module) is LIFNeuron:
            return [(name, _spiking_node(module.threshold, module.leak, _step_shape(node)))]
        if type(module) is PoolingNeuron:
            k = module.kernel_size
            threshold = module.threshold * (k * k if self.pool == "sum" else 1)
            return [(f"{name}.window", _window_node((k, k), (k, k), (0, 0), self.pool)),
                    (name, _spiking_node(threshold, 1.0, _step_shape(node)))]
        if isinstance(module, TimeFolded) and isinstance(module.module, nn.AvgPool2d):
            return [(name, _average_pool_node(module.module, self.pool))]
        raise ValueError(f"{name} is a {type(module).__name__}, which has no NIR mapping (the "
                         f"export maps the paper's LIFNeuron and PoolingNeuron)")

    def finish(self, current: torch.fx.Node) -> None:
        """The output layer's current feeds the integrator, whose membrane is the output."""
        shape = _step_shape(current)
        self.add(INTEGRATOR, _integrator_node(self.model.output, shape), self.sources[current])
        self.add(OUTPUT, nir.Output(np.array(shape)), [INTEGRATOR])


def export_graph(model: SpikingNetwork, pool: str = "avg",
                 metadata: Mapping[str, Any] | None = None) -> nir.NIRGraph:
    """``model`` at inference (no dropout) as a type-checked NIR graph.

    Args:
        model: one of the four networks (any ``width``, ``input_shape``, float dtype).
        pool: ``"avg"``: pooling neurons as ``AvgPool2d`` -> ``IF(v_threshold = 0.75)``;
            ``"sum"``: ``SumPool2d`` -> ``IF(v_threshold = 0.75 * 4)``, the 1/4 folded into the
            threshold (exact: 4 is a power of two), for toolchains without average pooling.
        metadata: added to the graph's metadata, after the time step and the conventions of
            :data:`SEMANTICS` (e.g. how the input spikes were made).

    Returns:
        The graph: node ``input`` (spikes ``(C, H, W)`` per step), one node per synapse layer and
        neuron layer named after the module (a pooling neuron: ``<name>.window``, ``<name>``),
        ``integrator`` (the output layer) and ``output``.
    """
    if pool not in POOL_VARIANTS:
        raise ValueError(f"pool must be one of {', '.join(POOL_VARIANTS)}, got {pool!r}")
    builder = _GraphBuilder(model, pool)
    for node in _traced(model).graph.nodes:
        builder.visit(node)
    info = {**SEMANTICS, "network": type(model).__name__, "pooling": pool,
            "output_threshold": float(model.output.threshold), **(metadata or {})}
    return nir.NIRGraph(nodes=builder.nodes, edges=builder.edges, metadata=info)
