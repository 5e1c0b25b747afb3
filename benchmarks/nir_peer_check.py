"""Run an exported NIR graph in a peer simulator (snnTorch 1.0, Norse 1.1 or SpikingJelly 2.0,
as :mod:`benchmarks.nir_peers` builds them) on the same input spikes as this project's network,
and compare the predictions and the spikes of every layer (docs/nir.md, "Checked by peers").

    python benchmarks/nir_peer_check.py --data DIR    # snnTorch, all 10,000 test digits
    python benchmarks/nir_peer_check.py --data DIR --peer norse --pool sum --images 500

Accuracy, not timing: the numbers do not depend on the machine's load.
"""
from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import nir
import torch
from torch import Tensor, nn

import models
from benchmarks.nir_peers import PEERS, Peer, count_spikes
from models.nir_graph import export_graph
from spiking import PoissonEncoder, SpikingNeuron
from training.checkpoint import load_checkpoint

SHIPPED = Path(__file__).resolve().parents[1] / "pretrained" / "model_bestT1_mnist_lenet.pth.tar"


def run_project(model: models.SpikingNetwork, spikes: Tensor) -> tuple[Tensor, dict[str, int]]:
    """This project's ``model`` on ``spikes`` -> its output ``[B, K]`` and the spikes of every
    LIF and pooling layer."""
    neurons = {name: module for name, module in model.named_modules()
               if isinstance(module, SpikingNeuron)}
    counts: dict[str, int] = {}
    hooks = count_spikes(neurons, counts)
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
        rows.append(f"| {name} | {ours} | {theirs} | {theirs - ours:+d} "
                    f"({100 * (theirs - ours) / max(ours, 1):+.5f} %) |")
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
                        help="torch threads (default 1: the peers' per-step tensors are small, "
                             "and on a shared machine further threads mostly wait)")
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
