"""Every implementation of the networks computes the same numbers.

Two oracles: the readable step-by-step reference (the ``reference`` backend: every neuron's own
methods one step at a time, spiking/backends/reference.py) and the literal port of the authors'
loop (models/authors_loop.py). The reference equals the
authors' loop, and every other backend of spiking.backends equals the reference: same weights,
same input spikes, same dropout masks, float64, outputs and every parameter gradient to a
relative error of 1e-9, in training mode (masks) and evaluation mode, and whether the model runs
the T steps at once or in chunks (the neurons carrying their membranes, NG and the backward's
delta across chunk boundaries).

A new backend joins by adding its table to ``spiking.backends``: ``FAST_BACKENDS`` lists every
backend but the reference, and a backend that cannot run on a device is skipped there.
Weights get a positive mean so spikes reach the deepest layers within a few steps; threshold 1.25
and leak 0.95 make the 1/threshold and NG factors visible.
"""
import functools
import math

import pytest
import torch

import models
from models.authors_loop import oracle_forward
from spiking import SpikingConv2d, SpikingLinear, TimeHeldDropout, backends
from spiking.backends import cpu, event_kernels

F64 = torch.float64
INPUT_SHAPE = {"lenet": (1, 8, 8), "vgg9": (3, 8, 8), "resnet11": (3, 16, 16),
               "resnet13": (3, 16, 16)}
DRIVE = {"lenet": (2.0, 0.3), "vgg9": (3.0, 0.4), "resnet11": (1.0, 0.3), "resnet13": (1.0, 0.3)}
WIDTH = {"lenet": 0.2, "vgg9": 0.08, "resnet11": 0.06, "resnet13": 0.06}
LEAK, THRESHOLD = 0.95, 1.25
ARCHS = ["lenet", "vgg9", "resnet11", "resnet13"]
FAST_BACKENDS = [name for name in backends.NAMES if name != "reference"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def build(arch: str, seed: int, dropout: float = 0.25):
    gen = torch.Generator().manual_seed(seed)
    kwargs = {} if arch == "lenet" else {"dropout": dropout}
    model = models.get_model(arch, width=WIDTH[arch], input_shape=INPUT_SHAPE[arch], leak=LEAK,
                             threshold=THRESHOLD, **kwargs).double()
    gain, shift = DRIVE[arch]
    with torch.no_grad():
        for weight in model.parameters():
            fan_in = weight[0].numel()
            weight.copy_((torch.randn(weight.shape, generator=gen, dtype=F64) + shift)
                         * math.sqrt(gain / fan_in))
    return model, gen


def oracle_weights(model):
    return {k: v.detach().clone().requires_grad_() for k, v in model.state_dict().items()}


def input_spikes(arch: str, gen, time_steps: int = 5, batch: int = 3):
    u = torch.rand((time_steps, batch, *INPUT_SHAPE[arch]), generator=gen, dtype=F64)
    return (u < 0.6).to(F64) - (u > 0.9).to(F64)


def masked_layer(dropout_name: str) -> str:
    """The weight layer whose spikes a dropout module masks: drop21 -> cnn21, drop_fc0 -> fc0."""
    return "fc0" if dropout_name == "drop_fc0" else "cnn" + dropout_name.removeprefix("drop")


def fix_dropout_masks(model, gen) -> dict[str, torch.Tensor]:
    """Make each dropout module return a known mask; key it by the layer whose spikes it masks."""
    masks = {}
    for name, module in model.named_modules():
        if isinstance(module, TimeHeldDropout) and module.p > 0:
            layer = masked_layer(name)

            def draw(spikes, module=module, layer=layer):
                masks[layer] = (torch.rand(spikes.shape[1:], generator=gen, dtype=F64)
                                > module.p).to(F64) / (1 - module.p)
                return masks[layer].to(spikes.device)

            module.draw_mask = draw
    return masks


def mse_sum(out, batch):
    target = torch.zeros_like(out)
    target[torch.arange(batch), torch.arange(batch) % out.shape[1]] = 1
    return ((out - target) ** 2).sum()


def assert_close(actual, expected, what):
    scale = expected.abs().max()
    assert scale > 0, f"{what}: the oracle's value is all zeros, the test would prove nothing"
    error = (actual - expected).abs().max() / scale
    assert error <= 1e-9, f"{what}: relative error {error:.2e}"


def hidden_layers(weights) -> set[str]:
    return {k.removesuffix(".weight") for k in weights if not k.startswith(("fc1", "shortcut"))}


def run_network(arch: str, backend_name: str, training: bool, time_chunk: int,
                device: str = "cpu"):
    """One forward and backward of the seeded test network with ``backend_name``: ``(output,
    {parameter name: gradient}, {layer: dropout mask}, oracle weights, spikes, model)``."""
    model, gen = build(arch, seed=1)
    weights = oracle_weights(model)
    spikes = input_spikes(arch, gen, time_steps=5)
    model.train(training)
    model.time_chunk = time_chunk
    masks = fix_dropout_masks(model, gen)
    model.to(device)
    with backends.use_backend(backend_name):
        out = model(spikes.to(device))
        mse_sum(out, spikes.shape[1]).backward()
    grads = {name: param.grad.cpu() for name, param in model.named_parameters()}
    return out.detach().cpu(), grads, masks, weights, spikes, model


@functools.cache
def reference_run(arch: str, training: bool):
    """The reference backend's output, gradients and masks over all T steps at once."""
    out, grads, masks, _, _, _ = run_network(arch, "reference", training, time_chunk=5)
    return out, grads, masks


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("time_chunk", [5, 2, 1], ids=["whole", "chunks-2-2-1", "per-step"])
def test_the_reference_equals_the_authors_loop(arch, training, time_chunk):
    out, grads, masks, weights, spikes, _ = run_network(arch, "reference", training, time_chunk)
    expected = oracle_forward(arch, weights, spikes, masks if training else None,
                              leak=LEAK, threshold=THRESHOLD)
    mse_sum(expected, spikes.shape[1]).backward()

    assert set(masks) == (hidden_layers(weights) if training and arch != "lenet" else set())
    assert_close(out, expected, "output")
    for name, grad in grads.items():
        assert_close(grad, weights[name].grad, f"grad of {name}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend_name", FAST_BACKENDS)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("training,time_chunk", [(True, 5), (True, 2), (True, 1), (False, 5)],
                         ids=["train-whole", "train-chunks-2-2-1", "train-per-step", "eval"])
def test_every_backend_equals_the_reference(backend_name, device, arch, training, time_chunk):
    reason = backends.unavailable(backend_name, torch.device(device))
    if reason is not None:
        pytest.skip(f"backend {backend_name} cannot run on {device}: {reason}")
    expected_out, expected_grads, expected_masks = reference_run(arch, training)
    out, grads, masks, _, _, _ = run_network(arch, backend_name, training, time_chunk, device)

    assert masks.keys() == expected_masks.keys()
    assert all(torch.equal(masks[k], expected_masks[k]) for k in masks)
    assert_close(out, expected_out, "output")
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        assert_close(grad, expected_grads[name], f"grad of {name}")


@pytest.mark.skipif(not event_kernels.available(), reason="no C compiler: no event kernels")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_event_driven_synapses_equal_the_reference(arch, training, monkeypatch):
    # Every chunk of every synapse event-driven, whatever its density; the input gradients of
    # the declared layers only at their input spikes.
    monkeypatch.setattr(cpu, "EVENT_DENSITY_MAX", 1.0)
    expected_out, expected_grads, _ = reference_run(arch, training)
    out, grads, _, _, _, model = run_network(arch, "cpu", training, time_chunk=2)

    synapses = [m for m in model.modules() if isinstance(m, (SpikingConv2d, SpikingLinear))]
    assert all(m.event_chunks == 3 and m.dense_chunks == 0 for m in synapses)
    assert sum(m.input_from_neurons for m in synapses) == len(synapses) - 1
    assert_close(out, expected_out, "output")
    for name, grad in grads.items():
        assert_close(grad, expected_grads[name], f"grad of {name}")
