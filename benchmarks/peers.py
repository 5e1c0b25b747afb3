"""The project's LeNet written with snnTorch and with SpikingJelly: the benchmark's peer variants.

Same network, T, batch and input as :class:`models.LeNet`: 5x5 convolutions 1->20 and 20->50 with
padding 2, 2x2 pooling, fc0 2450->200, fc1 200->10, no biases, the weights copied from the
project's model (any width). Each library's own neurons, set as the project's: LIF with leak 0.99
(the membrane's decay per step), threshold 1, hard reset to zero and the library's default
surrogate gradient (snnTorch's arctangent, SpikingJelly's sigmoid); the pooling neurons are the
library's neurons without leak (threshold 0.75) on the 2x2 average of the spikes, as in the
authors' network. The output layer integrates fc1's currents like the project's
(:func:`integrate_output`). Each network runs the way its library's documentation runs one:
snnTorch one time step at a time through the whole network, SpikingJelly in its multi-step mode
(each layer over all T at once). Each draws its Poisson input with its own encoder, at the
project's rate (spike probability: the input scale, 0.5 for MNIST, times the pixel value).

They compute the project's forward pass with their own neurons, not its backward pass: their
surrogate gradients replace the authors' leak-corrected derivative. SpikingJelly fires at a
membrane equal to the threshold (the project and snnTorch above it), so its pooling neurons,
whose input is a multiple of 0.25, fire more often. The libraries are optional
(``pip install -e ".[bench]"``).
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
from torch import Tensor, nn

from models import LeNet

__all__ = ["PEERS", "build_peer", "installed", "integrate_output"]

# variant name -> the package it needs
PEERS: dict[str, str] = {"snntorch": "snntorch", "spikingjelly": "spikingjelly"}


def installed(name: str) -> bool:
    """Whether the package of peer variant ``name`` can be imported here."""
    return importlib.util.find_spec(PEERS[name]) is not None


def integrate_output(currents: Tensor, leak: float, threshold: float) -> Tensor:
    """fc1's currents ``[T, B, K]`` -> output ``[B, K]``: the membrane ``m_t = leak * (m_{t-1} +
    I_t)`` after the last step, divided by ``threshold * T`` (the project's output layer)."""
    steps = currents.shape[0]
    decay = leak ** torch.arange(steps, 0, -1, dtype=currents.dtype, device=currents.device)
    return torch.einsum("t,tbk->bk", decay, currents) / (threshold * steps)


def _layers(model: LeNet, conv: type[nn.Conv2d] = nn.Conv2d,
            linear: type[nn.Linear] = nn.Linear) -> dict[str, nn.Module]:
    """The four synapse layers of ``model`` as ``conv`` and ``linear`` layers (a library's own
    classes) holding copies of its weights, shapes read from them."""
    layers: dict[str, nn.Module] = {}
    for name in ("cnn1", "cnn2", "fc0", "fc1"):
        weight = model.get_submodule(name).weight.detach()
        if weight.dim() == 4:
            layer = conv(weight.shape[1], weight.shape[0], weight.shape[-1],
                         padding=weight.shape[-1] // 2, bias=False)
        else:
            layer = linear(weight.shape[1], weight.shape[0], bias=False)
        layer.weight = nn.Parameter(weight.clone())
        layers[name] = layer
    return layers


class SnnTorchLeNet(nn.Module):
    """LeNet with ``snntorch.Leaky`` neurons, run one time step at a time.

    ``forward``: input spikes ``[T, B, 1, 28, 28]`` -> output ``[B, 10]``.
    """

    def __init__(self, model: LeNet) -> None:
        import snntorch

        super().__init__()
        layers = _layers(model)
        self.leak, self.threshold = model.leak, model.threshold

        def lif() -> nn.Module:
            return snntorch.Leaky(beta=model.leak, threshold=model.threshold,
                                  reset_mechanism="zero")

        def pooling() -> nn.Module:
            return snntorch.Leaky(beta=1.0, threshold=model.pool_threshold,
                                  reset_mechanism="zero")

        self.cnn1, self.lif1, self.pool1 = layers["cnn1"], lif(), pooling()
        self.cnn2, self.lif2, self.pool2 = layers["cnn2"], lif(), pooling()
        self.fc0, self.lif_fc0 = layers["fc0"], lif()
        self.fc1 = layers["fc1"]

    def forward(self, spikes: Tensor) -> Tensor:
        neurons = (self.lif1, self.pool1, self.lif2, self.pool2, self.lif_fc0)
        mem1, mem_pool1, mem2, mem_pool2, mem_fc0 = (neuron.reset_mem() for neuron in neurons)
        currents = []
        for x in spikes:
            x, mem1 = self.lif1(self.cnn1(x), mem1)
            x, mem_pool1 = self.pool1(nn.functional.avg_pool2d(x, 2), mem_pool1)
            x, mem2 = self.lif2(self.cnn2(x), mem2)
            x, mem_pool2 = self.pool2(nn.functional.avg_pool2d(x, 2), mem_pool2)
            x, mem_fc0 = self.lif_fc0(self.fc0(x.flatten(1)), mem_fc0)
            currents.append(self.fc1(x))
        return integrate_output(torch.stack(currents), self.leak, self.threshold)


class SpikingJellyLeNet(nn.Module):
    """LeNet with SpikingJelly's ``LIFNode`` and ``IFNode`` in multi-step mode.

    ``forward``: input spikes ``[T, B, 1, 28, 28]`` -> output ``[B, 10]``. The LIF neuron's
    ``H = V - V / tau + X`` (``decay_input=False``) is the project's ``leak * V + X`` with
    ``tau = 1 / (1 - leak)``.
    """

    def __init__(self, model: LeNet) -> None:
        from spikingjelly.activation_based import functional, layer, neuron

        super().__init__()
        self._reset_net = functional.reset_net

        def lif() -> nn.Module:
            return neuron.LIFNode(tau=1.0 / (1.0 - model.leak), decay_input=False,
                                  v_threshold=model.threshold, v_reset=0.0)

        def pooling() -> nn.Module:
            return neuron.IFNode(v_threshold=model.pool_threshold, v_reset=0.0)

        layers = _layers(model, layer.Conv2d, layer.Linear)
        self.leak, self.threshold = model.leak, model.threshold
        self.cnn1, self.lif1 = layers["cnn1"], lif()
        self.average1, self.pool1 = layer.AvgPool2d(2), pooling()
        self.cnn2, self.lif2 = layers["cnn2"], lif()
        self.average2, self.pool2 = layer.AvgPool2d(2), pooling()
        self.flatten = layer.Flatten()
        self.fc0, self.lif_fc0 = layers["fc0"], lif()
        self.fc1 = layers["fc1"]
        functional.set_step_mode(self, "m")  # every layer over all T at once

    def forward(self, spikes: Tensor) -> Tensor:
        self._reset_net(self)
        try:
            x = self.pool1(self.average1(self.lif1(self.cnn1(spikes))))
            x = self.pool2(self.average2(self.lif2(self.cnn2(x))))
            x = self.lif_fc0(self.fc0(self.flatten(x)))
            return integrate_output(self.fc1(x), self.leak, self.threshold)
        finally:
            self._reset_net(self)  # the membranes hold this input's autograd graph


def _snntorch_encoder(time_steps: int, scale: float) -> Callable[[Tensor], Tensor]:
    from snntorch import spikegen

    return lambda images: spikegen.rate(images * scale, num_steps=time_steps)


def _spikingjelly_encoder(time_steps: int, scale: float) -> Callable[[Tensor], Tensor]:
    from spikingjelly.activation_based import encoding

    encoder = encoding.PoissonEncoder(step_mode="m")
    return lambda images: encoder((images * scale).expand(time_steps, *images.shape))


def build_peer(name: str, model: LeNet, time_steps: int,
               scale: float) -> tuple[nn.Module, Callable[[Tensor], Tensor]]:
    """Peer variant ``name``'s LeNet, with ``model``'s weights and neuron settings, and its
    encoder: images ``[B, 1, 28, 28]`` in [0, 1] -> input spikes ``[T, B, 1, 28, 28]``, each
    entry 1 with probability ``scale`` times its pixel."""
    if name == "snntorch":
        return SnnTorchLeNet(model), _snntorch_encoder(time_steps, scale)
    if name == "spikingjelly":
        return SpikingJellyLeNet(model), _spikingjelly_encoder(time_steps, scale)
    raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
