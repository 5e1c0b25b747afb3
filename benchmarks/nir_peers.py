"""Peer simulators for exported NIR graphs: snnTorch 1.0, Norse 1.1 and SpikingJelly 2.0, each
its own neuron modules under a nirtorch graph executor (docs/nir.md, "Checked by peers").

Where a peer's importer departs from the NIR definitions, the node types concerned are mapped as
the definitions say, with the peer's own modules where it has them; every other node is left to
the peer's importer. Each peer is a :class:`Peer`: ``build(graph)`` gives the network,
``run(network, spikes [T, B, ...])`` its output after the last step ``[B, K]`` and the spike
count of every LIF/IF node. The peers' packages are imported only when used.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import nir
import numpy as np
import torch
from torch import Tensor, nn

from models.nir_graph import DT

__all__ = ["PEERS", "Peer", "count_spikes"]


class MembraneReadout(nn.Module):
    """NIR ``LI`` / ``I`` (no spikes: the membrane is the output) with snnTorch's ``snn.Leaky``:
    ``mem = beta * mem + input`` without reset, fed ``gain * I`` so that one step is the node's
    forward Euler step ``v <- (1 - dt/tau) v + (dt/tau) r I`` (``I``: ``v <- v + dt r I``)."""

    def __init__(self, beta: float, gain: float) -> None:
        super().__init__()
        import snntorch as snn

        self.gain = gain
        self.neuron = snn.Leaky(beta=beta, reset_mechanism="none", init_hidden=True,
                                output=True)

    def forward(self, current: Tensor) -> Tensor:
        _, membrane = self.neuron(current * self.gain)
        return membrane


def _scalar(values: np.ndarray) -> float:
    unique = np.unique(np.asarray(values, dtype=np.float64))
    if unique.size != 1:
        raise ValueError("per-neuron parameters differ; the adapters take one value per layer")
    return float(unique[0])


def _integrate_and_fire(node: nir.IF) -> nn.Module:
    """NIR ``IF``: ``v <- v + dt r I``, spike where v > v_threshold, then v = v_reset (0).
    snnTorch maps it to a neuron with leak 0.9, reset by subtraction, and refuses r != 1;
    here: ``snn.Leaky`` without leak, reset to zero, threshold over the per-step gain dt*r
    (snnTorch's own device for LIF input gains)."""
    import snntorch as snn

    if np.any(np.asarray(node.v_reset) != 0):
        raise ValueError("snn.Leaky resets to 0 only")
    return snn.Leaky(beta=1.0, threshold=_scalar(node.v_threshold) / (_scalar(node.r) * DT),
                     reset_mechanism="zero", init_hidden=True, reset_delay=False)


class _NirFlatten(nn.Flatten):
    """NIR ``Flatten``: dims count from the first per-sample dim. snnTorch hands them to
    ``nn.Flatten`` unchanged, which counts the batch dim: ``start_dim = 0`` flattens the batch."""

    def __init__(self, node: nir.Flatten) -> None:
        start, end = int(node.start_dim), int(node.end_dim)
        super().__init__(start + 1 if start >= 0 else start, end + 1 if end >= 0 else end)


def _readout(node: nir.LI | nir.I) -> MembraneReadout:
    if isinstance(node, nir.I):
        return MembraneReadout(1.0, _scalar(node.r) * DT)
    if np.any(np.asarray(node.v_leak) != 0):
        raise ValueError("snn.Leaky has no leak potential")
    step = DT / _scalar(node.tau)
    return MembraneReadout(1.0 - step, step * _scalar(node.r))


SNNTORCH_REPAIRS: dict[type, Callable[[nir.NIRNode], nn.Module]] = {
    nir.IF: _integrate_and_fire, nir.Flatten: _NirFlatten, nir.LI: _readout, nir.I: _readout}


def snntorch_network(graph: nir.NIRGraph) -> torch.fx.GraphModule:
    """``graph`` as snnTorch's ``import_from_nir`` builds it (its node mapping, float32, under
    ``nirtorch.nir_to_torch``), with :data:`SNNTORCH_REPAIRS` for ``IF``, ``Flatten``, ``LI``
    and ``I``.
    Call it once per time step on ``[B, ...]``; reset with :func:`reset_snntorch`."""
    import nirtorch
    from snntorch.import_nir import _nir_to_snntorch_module

    def snntorch_module(node: nir.NIRNode) -> nn.Module:
        return _nir_to_snntorch_module(node, init_hidden=True)

    node_map = {t: snntorch_module for t in (nir.Affine, nir.Linear, nir.Conv2d, nir.AvgPool2d,
                                             nir.LIF, nir.CubaLIF)}
    network = nirtorch.nir_to_torch(graph, {**node_map, **SNNTORCH_REPAIRS})
    return _named_by_nodes(network, graph)


def reset_snntorch(network: nn.Module) -> None:
    """Every snnTorch neuron of ``network`` back at rest (membranes 0)."""
    import snntorch as snn

    for module in network.modules():
        if isinstance(module, snn.Leaky):
            module.reset_mem()


def count_spikes(modules: dict[str, nn.Module], counts: dict[str, int]) -> list:
    """Forward hooks adding the nonzero outputs of each of ``modules`` to ``counts[name]``
    (of the spikes where a module returns ``(spikes, state)``); returns their handles."""
    def hook(name: str) -> Callable:
        def count(module: nn.Module, inputs: tuple, output: Tensor | tuple) -> None:
            spikes = output[0] if isinstance(output, tuple) else output  # (spikes, state)
            counts[name] = counts.get(name, 0) + int(torch.count_nonzero(spikes))
        return count
    return [module.register_forward_hook(hook(name)) for name, module in modules.items()]


def _named_by_nodes(network: nn.Module, graph: nir.NIRGraph) -> nn.Module:
    """Attach the NIR node names to a graph-executor module: ``node_names`` (its child's name,
    dots made underscores as nirtorch does -> the node's) and ``spiking`` (the LIF/IF nodes)."""
    network.node_names = {name.replace(".", "_"): name for name in graph.nodes}
    network.spiking = {name.replace(".", "_") for name, node in graph.nodes.items()
                       if isinstance(node, (nir.LIF, nir.IF))}
    return network


def _neurons(network: nn.Module) -> dict[str, nn.Module]:
    """The spiking modules of a graph-executor module, by NIR node name."""
    return {network.node_names[name]: module for name, module in network.named_children()
            if name in network.spiking}


def run_snntorch(network: nn.Module, spikes: Tensor) -> tuple[Tensor, dict[str, int]]:
    """``spikes [T, B, ...]`` one step at a time -> the output node after the last step
    ``[B, K]`` and the spikes of every spiking layer (named as this project's modules)."""
    counts: dict[str, int] = {}
    hooks = count_spikes(_neurons(network), counts)
    reset_snntorch(network)
    try:
        with torch.no_grad():
            for step in spikes.float():
                output, _ = network(step)
    finally:
        for handle in hooks:
            handle.remove()
    return output, counts


class _StrictThreshold(nn.Module):
    """A SpikingJelly neuron fires where ``v - v_threshold >= 0`` (its Heaviside is 1 at 0);
    NIR's fire where ``v > v_threshold``. With the next float32 above the threshold the two
    agree on every float32 membrane."""

    def __init__(self, stateful: nn.Module) -> None:
        super().__init__()
        self.stateful = stateful
        neuron = stateful.module
        neuron.v_threshold = float(np.nextafter(np.float32(neuron.v_threshold), np.float32(np.inf)))

    def forward(self, x: Tensor, state: tuple | None = None) -> tuple[Tensor, tuple]:
        return self.stateful(x, state)


class _SpikingJellyReadout(nn.Module):
    """NIR ``LI`` / ``I`` with SpikingJelly's ``LIFNode`` that never fires (threshold inf):
    ``v <- v - v / tau + X`` with ``tau = 1 / (1 - leak)`` and ``X = gain * I`` is the node's
    Euler step; returns the membrane after the sequence ``[B, K]``."""

    def __init__(self, node: nir.LI | nir.I) -> None:
        super().__init__()
        from spikingjelly.activation_based import neuron

        if isinstance(node, nir.I):
            step, self.gain = 0.0, _scalar(node.r) * DT
        else:
            step = DT / _scalar(node.tau)
            self.gain = step * _scalar(node.r)
        self.neuron = neuron.LIFNode(tau=1 / step if step else float("inf"), decay_input=False,
                                     v_threshold=float("inf"), v_reset=0.0, step_mode="m")

    def forward(self, current: Tensor) -> Tensor:
        self.neuron(current * self.gain)
        return self.neuron.v


def spikingjelly_network(graph: nir.NIRGraph) -> torch.fx.GraphModule:
    """``graph`` as SpikingJelly 2.0's ``import_from_nir(graph, dt=1e-4, step_mode='m')``
    builds it, with three repairs: the strict threshold, ``LI``/``I`` (unmapped) and
    ``SumPool2d`` (left to nirtorch's single-step default) as SpikingJelly layers. Call it once
    on the whole ``[T, B, ...]``."""
    from spikingjelly.activation_based import functional, layer
    from spikingjelly.activation_based.nir_exchange import from_nir
    import nirtorch

    mapper = from_nir._NodeMapper(dt=DT)
    node_map = dict(mapper.map_dict)
    node_map[nir.IF] = lambda node: _StrictThreshold(mapper.map_if(node))
    node_map[nir.LIF] = lambda node: _StrictThreshold(mapper.map_lif(node))
    node_map[nir.LI] = node_map[nir.I] = _SpikingJellyReadout
    node_map[nir.SumPool2d] = lambda node: layer.AvgPool2d(
        tuple(int(k) for k in node.kernel_size), tuple(int(k) for k in node.stride),
        tuple(int(k) for k in node.padding), divisor_override=1)
    network = nirtorch.nir_to_torch(graph, node_map)
    functional.set_step_mode(network, "m")
    return _named_by_nodes(network, graph)


def run_spikingjelly(network: nn.Module, spikes: Tensor) -> tuple[Tensor, dict[str, int]]:
    """As :func:`run_snntorch`, the whole sequence in one call (multi-step mode)."""
    from spikingjelly.activation_based import functional

    counts: dict[str, int] = {}
    hooks = count_spikes(_neurons(network), counts)
    functional.reset_net(network)
    try:
        with torch.no_grad():
            output, _ = network(spikes.float())
    finally:
        for handle in hooks:
            handle.remove()
    return output, counts


class _NorseInputGain(nn.Module):
    """A Norse cell fed ``gain * I``: Norse's own device for ``r`` (its ``CubaLIF`` mapping
    scales the input by ``r``), here for the nodes whose mapping drops it."""

    def __init__(self, gain: float, cell: nn.Module) -> None:
        super().__init__()
        self.gain, self.cell = gain, cell

    def forward(self, x: Tensor, state: object = None) -> tuple[Tensor, object]:
        return self.cell(x * self.gain, state)


def _norse_repairs(node: nir.NIRNode) -> nn.Module | None:
    """Norse 1.1's departures repaired (docs/nir.md); None: Norse's own mapping as it is."""
    from norse.torch.module import leaky_integrator_box as li_box
    from norse.torch.utils.import_nir import _import_norse_module

    if isinstance(node, nir.LIF):  # Norse's LIFBoxCell without r: input gain dt/tau
        return _NorseInputGain(_scalar(node.r), _import_norse_module(node, True, dt=DT))
    if isinstance(node, nir.IF):  # Norse's IAFCell adds its input as it comes: no r, no dt
        return _NorseInputGain(_scalar(node.r) * DT, _import_norse_module(node, True, dt=DT))
    if isinstance(node, nir.LI):  # not mapped: its LIBoxCell, fed r * I
        cell = li_box.LIBoxCell(li_box.LIBoxParameters(
            tau_mem_inv=torch.tensor(1 / _scalar(node.tau)),
            v_leak=torch.tensor(_scalar(node.v_leak))), dt=DT)
        return _NorseInputGain(_scalar(node.r), cell)
    if isinstance(node, nir.AvgPool2d):  # not mapped
        return nn.AvgPool2d(tuple(int(k) for k in node.kernel_size),
                            tuple(int(k) for k in node.stride),
                            tuple(int(k) for k in node.padding))
    if isinstance(node, nir.Flatten):  # counts the batch, as snnTorch's
        return _NirFlatten(node)
    return None


def norse_network(graph: nir.NIRGraph) -> nn.Module:
    """``graph`` as Norse 1.1's ``from_nir(graph, dt=1e-4)`` builds it (its mapping, under
    nirtorch's ``GraphExecutor``), with the repairs of :func:`_norse_repairs`. Call it once per
    time step with the state it returned the step before."""
    import nirtorch
    with warnings.catch_warnings():  # Norse's torch.jit use, nirtorch.load's deprecation
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
        from norse.torch.utils.import_nir import _import_norse_module

    def norse_module(node: nir.NIRNode) -> nn.Module | None:
        repaired = _norse_repairs(node)
        return repaired if repaired is not None else _import_norse_module(
            node, ignore_warnings=True, dt=DT)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Norse's route: nirtorch.load
        return _named_by_nodes(nirtorch.load(graph, norse_module), graph)


def run_norse(network: nn.Module, spikes: Tensor) -> tuple[Tensor, dict[str, int]]:
    """As :func:`run_snntorch`, the state handed from step to step."""
    counts: dict[str, int] = {}
    hooks = count_spikes(_neurons(network), counts)
    state = None
    try:
        with torch.no_grad():
            for step in spikes.float():
                output, state = network(step, state)
    finally:
        for handle in hooks:
            handle.remove()
    return output, counts


@dataclass(frozen=True)
class Peer:
    """A peer simulator: its name in the table, how it builds a graph, how it runs spikes."""

    name: str
    build: Callable[[nir.NIRGraph], nn.Module]
    run: Callable[[nn.Module, Tensor], tuple[Tensor, dict[str, int]]]


PEERS = {"snntorch": Peer("snnTorch 1.0 (nirtorch graph executor)", snntorch_network,
                          run_snntorch),
         "spikingjelly": Peer("SpikingJelly 2.0 (nirtorch graph executor, multi-step)",
                              spikingjelly_network, run_spikingjelly),
         "norse": Peer("Norse 1.1 (nirtorch GraphExecutor)", norse_network, run_norse)}
