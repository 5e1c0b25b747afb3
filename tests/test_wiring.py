"""What feeds each synapse is read from the network's forward_chunk (models/wiring.py): the four
networks mark exactly the synapses they used to declare, a synapse fed by anything but neurons is
not marked, and a network the tracer cannot follow keeps its declarations."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor

import models
from models.base import SpikingNetwork
from spiking import LIFNeuron, OutputIntegrator, SpikingConv2d, SpikingLinear, TimeHeldDropout

# the synapses each network declared by hand before the wiring was derived: all but the input
# layer's (ResNet11: 13 names, its three 1x1 shortcuts included)
RESNET11 = {"cnn21", "cnn22", "shortcut1.0", "cnn31", "cnn32", "shortcut2.0", "cnn41", "cnn42",
            "shortcut3.0", "cnn51", "cnn52", "fc0", "fc1"}
FROM_NEURONS = {"lenet": {"cnn2", "fc0", "fc1"},
                "vgg9": {"cnn12", "cnn21", "cnn22", "cnn31", "cnn32", "cnn33", "fc0", "fc1"},
                "resnet11": RESNET11, "resnet13": RESNET11 | {"cnn61", "cnn62"}}


def synapses(model: torch.nn.Module) -> dict[str, SpikingConv2d | SpikingLinear]:
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (SpikingConv2d, SpikingLinear))}


@pytest.mark.parametrize("arch", sorted(FROM_NEURONS))
def test_the_four_networks_derive_what_they_declared(arch):
    model = models.get_model(arch, width=0.125)
    assert not any(m.input_from_neurons or m.input_spikes for m in synapses(model).values())
    model.read_synapse_inputs()
    marked = {name for name, m in synapses(model).items() if m.input_from_neurons}
    assert marked == FROM_NEURONS[arch]
    assert all(m.input_spikes for m in synapses(model).values())


class Wired(SpikingNetwork):
    """Four synapses: ``a`` reads the input, ``b`` dropout over LIF spikes, ``c`` a current
    (``a``'s), ``d`` a scaled copy of the spikes (not one of the shapes the tracer follows)."""

    def __init__(self, neuron=LIFNeuron) -> None:
        super().__init__((1, 4, 4), 3, 0.9, 1.0, 0.75, 0.5, neuron)
        self.a = SpikingLinear(16, 8)
        self.neurons, self.drop = self.lif(), TimeHeldDropout(0.5)
        self.b, self.c, self.d = SpikingLinear(8, 3), SpikingLinear(8, 3), SpikingLinear(8, 3)
        self.output = OutputIntegrator(0.9, 1.0)
        self.reset_parameters()

    def forward_chunk(self, spikes: Tensor) -> Tensor:
        current = self.a(spikes.flatten(2))
        x = self.drop(self.neurons(current.clone()))
        return self.b(x) + self.c(current) + self.d(2 * x)


def test_only_a_neurons_output_marks_a_synapse():
    model = Wired()
    model(torch.ones(2, 1, 1, 4, 4))  # the first forward reads the wiring
    flags = {name: (m.input_spikes, m.input_from_neurons) for name, m in synapses(model).items()}
    assert flags == {"a": (True, False), "b": (True, True), "c": (False, False),
                     "d": (False, False)}


def test_surrogate_neurons_feed_spikes_but_not_event_gradients():
    class Surrogate(LIFNeuron):
        def backward_step(self, grad_spikes, grad_membrane, spikes, scale):
            return grad_spikes + grad_membrane

    model = Wired(Surrogate)
    model.read_synapse_inputs()
    assert (model.b.input_spikes, model.b.input_from_neurons) == (True, False)


class Untraceable(Wired):
    """A forward_chunk with Python control flow on the data: the tracer cannot follow it, so
    the network declares what feeds its synapses."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs_from_neurons(self.b)
        self.inputs_are_spikes()

    def forward_chunk(self, spikes: Tensor) -> Tensor:
        if bool(spikes.sum() > 0):
            return self.b(self.drop(self.neurons(self.a(spikes.flatten(2)))))
        return self.b(torch.zeros(*spikes.shape[:2], 8))


def test_a_network_the_tracer_cannot_follow_keeps_its_declarations():
    model = Untraceable()
    torch.manual_seed(0)
    model(torch.ones(2, 1, 1, 4, 4))
    assert all(m.input_spikes for m in synapses(model).values())
    assert [name for name, m in synapses(model).items() if m.input_from_neurons] == ["b"]
