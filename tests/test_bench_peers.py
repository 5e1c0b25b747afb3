"""The benchmark's peer variants (benchmarks/peers.py): snnTorch's and SpikingJelly's LeNet are the
project's LeNet, layer for layer, they spike, and they train through the trainer's step.

A peer's tests are skipped where its library is not installed (pip install -e ".[bench]").
Real MNIST test digits, T = 24 (the deepest layer first fires after about 16 steps), width 0.25.
"""
from pathlib import Path

import pytest
import torch

import models
from benchmarks import bench, peers
from spiking import LIFNeuron, OutputIntegrator, PoolingNeuron

DIGITS = Path(__file__).parent / "data" / "mnist_test_digits.pt"
NEURONS = ("lif1", "pool1", "lif2", "pool2", "lif_fc0")
STEPS, BATCH, WIDTH = 24, 4, 0.25


def digits() -> torch.Tensor:
    return torch.load(DIGITS)["images"][:BATCH, None].float() / 255


def peer_or_skip(name: str) -> None:
    if not peers.installed(name):
        pytest.skip(f"{name} is not installed (pip install -e \".[bench]\")")


def spike_trains(network: torch.nn.Module, spikes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every neuron layer's output spikes ``[T, B, ...]`` for input ``spikes``, by the project's
    layer names (snnTorch's run once per step: T outputs ``[B, ...]``, stacked)."""
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in NEURONS}

    def record(name):
        def hook(module, args, output):
            output = output[0] if isinstance(output, tuple) else output  # snnTorch: (spk, mem)
            outputs[name].append(output.detach())
        return hook

    handles = [network.get_submodule(name).register_forward_hook(record(name))
               for name in NEURONS]
    try:
        with torch.no_grad():
            network(spikes)
    finally:
        for handle in handles:
            handle.remove()
    join = torch.stack if isinstance(network, peers.SnnTorchLeNet) else torch.cat
    return {name: join(out) for name, out in outputs.items()}


def test_the_peers_read_out_like_the_project():
    currents = torch.randn(7, 3, 10, dtype=torch.float64)
    expected = OutputIntegrator(leak=0.95, threshold=1.25)(currents)
    torch.testing.assert_close(peers.integrate_output(currents, 0.95, 1.25), expected)


@pytest.mark.parametrize("name", list(peers.PEERS))
def test_peer_lenet_has_the_project_layers_and_weights_and_spikes(name):
    peer_or_skip(name)
    torch.manual_seed(0)
    model = models.get_model("lenet", width=WIDTH)
    network, encoder = peers.build_peer(name, model, STEPS, 0.5)
    spikes = encoder(digits())
    assert spikes.shape == (STEPS, BATCH, 1, 28, 28) and set(spikes.unique().tolist()) == {0, 1}
    rate = 0.5 * digits().mean()  # the project's rate code: probability 0.5 x pixel
    assert 0.9 * rate < spikes.mean() < 1.1 * rate

    for layer in ("cnn1", "cnn2", "fc0", "fc1"):
        mine = model.get_submodule(layer).weight
        assert torch.equal(network.get_submodule(layer).weight, mine)
        assert network.get_submodule(layer).weight.data_ptr() != mine.data_ptr()  # a copy
    project = {n: m for n, m in model.named_modules() if isinstance(m, (LIFNeuron, PoolingNeuron))}
    assert tuple(project) == NEURONS
    theirs = spike_trains(network, spikes)
    ours = spike_trains(model, spikes)
    for layer in NEURONS:
        assert theirs[layer].shape == ours[layer].shape == (STEPS, BATCH, *ours[layer].shape[2:])
        rate = theirs[layer].mean().item()
        assert 0 < rate < 0.3, f"{name} {layer}: spike rate {rate}"
        assert set(theirs[layer].unique().tolist()) <= {0, 1}


@pytest.mark.parametrize("name", list(peers.PEERS))
def test_peer_lenet_takes_the_trainers_training_step(name):
    peer_or_skip(name)
    settings = bench.BenchSettings(time_steps=STEPS, batch=BATCH, width=WIDTH, variants=(name,))
    variant = bench.build_variants(settings)[name]
    before = {k: w.detach().clone() for k, w in variant.model.named_parameters()}
    assert set(before) == {"cnn1.weight", "cnn2.weight", "fc0.weight", "fc1.weight"}

    stats = variant.train_step()
    assert stats.samples == BATCH and stats.loss > 0
    for key, weight in variant.model.named_parameters():
        assert weight.grad is not None and torch.isfinite(weight.grad).all(), key
        assert not torch.equal(weight, before[key]), f"{name}: {key} did not learn"
    assert variant.eval_step().samples == BATCH
