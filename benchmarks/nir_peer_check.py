"""Run an exported NIR graph in snnTorch 1.0 (its own neuron modules under nirtorch's graph
executor) on the same input spikes as this project's network, and compare the predictions and
the spikes of every layer (docs/nir.md, "Checked by a peer").

snnTorch's importer departs from the NIR definitions for three node types; :func:`snntorch_network`
maps those three with snnTorch's own ``snn.Leaky`` as the definitions say and leaves every other
node to snnTorch (docs/nir.md lists each departure and what it changes).

    python benchmarks/nir_peer_check.py --data /work/shared/data          # all 10,000, T = 100
    python benchmarks/nir_peer_check.py --data DIR --images 500 --pool sum

Accuracy, not timing: the numbers do not depend on the machine's load.
"""
from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nir
import numpy as np
import torch
from torch import Tensor, nn

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from models.nir_graph import DT, export_graph  # noqa: E402
from spiking import LIFNeuron, PoissonEncoder, PoolingNeuron  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "pretrained" / "model_bestT1_mnist_lenet.pth.tar"


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
        raise ValueError("per-neuron parameters differ; snnTorch's snn.Leaky takes one value")
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


REPAIRS: dict[type, Callable[[nir.NIRNode], nn.Module]] = {
    nir.IF: _integrate_and_fire, nir.Flatten: _NirFlatten, nir.LI: _readout, nir.I: _readout}


def snntorch_network(graph: nir.NIRGraph) -> torch.fx.GraphModule:
    """``graph`` as snnTorch's ``import_from_nir`` builds it (its node mapping, float32, under
    ``nirtorch.nir_to_torch``), with :data:`REPAIRS` for ``IF``, ``Flatten``, ``LI`` and ``I``.
    Call it once per time step on ``[B, ...]``; reset with :func:`reset_snntorch`."""
    import nirtorch
    from snntorch.import_nir import _nir_to_snntorch_module

    def snntorch_module(node: nir.NIRNode) -> nn.Module:
        return _nir_to_snntorch_module(node, init_hidden=True)

    node_map = {t: snntorch_module for t in (nir.Affine, nir.Linear, nir.Conv2d, nir.AvgPool2d,
                                             nir.LIF, nir.CubaLIF)}
    network = nirtorch.nir_to_torch(graph, {**node_map, **REPAIRS})
    network.node_names = {name.replace(".", "_"): name for name in graph.nodes}  # nirtorch's
    return network


def reset_snntorch(network: nn.Module) -> None:
    """Every snnTorch neuron of ``network`` back at rest (membranes 0)."""
    import snntorch as snn

    for module in network.modules():
        if isinstance(module, snn.Leaky):
            module.reset_mem()


def _count_spikes(modules: dict[str, nn.Module], counts: dict[str, int]) -> list:
    def hook(name: str) -> Callable:
        def count(module: nn.Module, inputs: tuple, output: Tensor | tuple) -> None:
            spikes = output[0] if isinstance(output, tuple) else output  # (spikes, state)
            counts[name] = counts.get(name, 0) + int(torch.count_nonzero(spikes))
        return count
    return [module.register_forward_hook(hook(name)) for name, module in modules.items()]


def _neurons(network: nn.Module, kinds: tuple[type, ...]) -> dict[str, nn.Module]:
    """The spiking modules of a graph-executor module, by NIR node name."""
    return {network.node_names[name]: module for name, module in network.named_children()
            if isinstance(module, kinds)}


def run_snntorch(network: nn.Module, spikes: Tensor) -> tuple[Tensor, dict[str, int]]:
    """``spikes [T, B, ...]`` one step at a time -> the output node after the last step
    ``[B, K]`` and the spikes of every spiking layer (named as this project's modules)."""
    import snntorch as snn

    counts: dict[str, int] = {}
    hooks = _count_spikes(_neurons(network, (snn.Leaky,)), counts)
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
    network.node_names = {name.replace(".", "_"): name for name in graph.nodes}
    return network


def run_spikingjelly(network: nn.Module, spikes: Tensor) -> tuple[Tensor, dict[str, int]]:
    """As :func:`run_snntorch`, the whole sequence in one call (multi-step mode)."""
    from spikingjelly.activation_based import functional

    counts: dict[str, int] = {}
    hooks = _count_spikes(_neurons(network, (_StrictThreshold,)), counts)
    functional.reset_net(network)
    try:
        with torch.no_grad():
            output, _ = network(spikes.float())
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
                              spikingjelly_network, run_spikingjelly)}


def run_project(model: models.SpikingNetwork, spikes: Tensor) -> tuple[Tensor, dict[str, int]]:
    """This project's ``model`` on ``spikes`` -> its output ``[B, K]`` and the spikes of every
    LIF and pooling layer."""
    neurons = {name: module for name, module in model.named_modules()
               if isinstance(module, (LIFNeuron, PoolingNeuron))}
    counts: dict[str, int] = {}
    hooks = _count_spikes(neurons, counts)
    try:
        with torch.no_grad():
            output = model.eval()(spikes)
    finally:
        for handle in hooks:
            handle.remove()
    return output, counts


def through_a_file(graph: nir.NIRGraph) -> nir.NIRGraph:
    """``graph`` written with ``nir.write`` and read back with ``nir.read``, as a peer gets it."""
    buffer = io.BytesIO()
    nir.write(buffer, graph)
    buffer.seek(0)
    return nir.read(buffer)


def shipped_lenet() -> models.SpikingNetwork:
    model = models.get_model("lenet")
    model.load_state_dict(load_checkpoint(str(SHIPPED))["state_dict"], strict=True)
    return model.eval()


@dataclass
class Comparison:
    """Counts over the images seen: correct predictions of each, equal predictions, and the
    spikes of every layer in each."""

    images: int = 0
    project_correct: int = 0
    peer_correct: int = 0
    agree: int = 0
    project_spikes: dict[str, int] | None = None
    peer_spikes: dict[str, int] | None = None

    def add(self, labels: Tensor, ours: Tensor, theirs: Tensor, our_counts: dict[str, int],
            their_counts: dict[str, int]) -> None:
        ours, theirs = ours.argmax(1), theirs.argmax(1)
        self.images += len(labels)
        self.project_correct += int((ours == labels).sum())
        self.peer_correct += int((theirs == labels).sum())
        self.agree += int((ours == theirs).sum())
        self.project_spikes = _summed(self.project_spikes, our_counts)
        self.peer_spikes = _summed(self.peer_spikes, their_counts)


def _summed(total: dict[str, int] | None, counts: dict[str, int]) -> dict[str, int]:
    return {name: (total or {}).get(name, 0) + count for name, count in counts.items()}


def compare(model: models.SpikingNetwork, peer: Peer, network: nn.Module, images: Tensor,
            labels: Tensor, time_steps: int, scale: float, seed: int, batch: int,
            progress: bool = False) -> Comparison:
    """Both networks on the same Poisson spikes of ``images [N, C, H, W]`` (one generator
    seeded with ``seed``, drawn batch by batch)."""
    encoder = PoissonEncoder(time_steps, scale, torch.Generator().manual_seed(seed))
    result = Comparison()
    for start in range(0, len(images), batch):
        spikes = encoder(images[start:start + batch])
        ours, our_counts = run_project(model, spikes)
        theirs, their_counts = peer.run(network, spikes)
        result.add(labels[start:start + batch], ours, theirs, our_counts, their_counts)
        if progress:
            print(f"\r{result.images}/{len(images)} images, agreement "
                  f"{100 * result.agree / result.images:.2f} %", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    return result


def _mnist_test(root: str, count: int) -> tuple[Tensor, Tensor]:
    from torchvision import datasets, transforms

    test = datasets.MNIST(root, train=False, download=False, transform=transforms.ToTensor())
    count = min(count, len(test))
    return test.data[:count].unsqueeze(1).float() / 255, test.targets[:count]


def report(result: Comparison, peer: Peer, command: str, time_steps: int, pool: str) -> str:
    """The markdown table docs/nir.md shows, with the command that produced it."""
    rows = [f"MNIST test set, first {result.images} images, T = {time_steps}, pooling {pool}, "
            f"float32; `{command}`", "",
            "| network | top-1 | predictions equal to this project's |", "|---|---|---|",
            f"| this project (LeNet) | {100 * result.project_correct / result.images:.2f} % | |",
            f"| {peer.name} | "
            f"{100 * result.peer_correct / result.images:.2f} % | "
            f"{100 * result.agree / result.images:.2f} % |", "",
            f"| layer | spikes (this project) | spikes ({peer.name.split(' (')[0]}) | difference |",
            "|---|---|---|---|"]
    for name, ours in result.project_spikes.items():
        theirs = result.peer_spikes.get(name, 0)
        rows.append(f"| {name} | {ours} | {theirs} | "
                    f"{100 * (theirs - ours) / max(ours, 1):+.3f} % |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="directory holding MNIST/raw (torchvision layout)")
    parser.add_argument("--resume", default=str(SHIPPED), metavar="PATH",
                        help="LeNet checkpoint (default: the shipped model)")
    parser.add_argument("-T", "--time-steps", type=int, default=100)
    parser.add_argument("--images", type=int, default=10000, help="first N test images")
    parser.add_argument("--pool", choices=("avg", "sum"), default="avg")
    parser.add_argument("--peer", choices=sorted(PEERS), default="snntorch")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1, help="seed of the input spikes")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: snnTorch's per-step tensors are small, "
                             "and on a busy machine more threads ran 30x slower here)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = models.get_model("lenet")
    model.load_state_dict(load_checkpoint(args.resume)["state_dict"], strict=True)
    peer = PEERS[args.peer]
    network = peer.build(through_a_file(export_graph(model, args.pool)))
    images, labels = _mnist_test(args.data, args.images)
    result = compare(model.eval(), peer, network, images, labels, args.time_steps, 0.5,
                     args.seed, args.batch, progress=True)
    command = "python benchmarks/nir_peer_check.py " + " ".join(argv or sys.argv[1:])
    print(report(result, peer, command.strip(), args.time_steps, args.pool))


if __name__ == "__main__":
    main()
