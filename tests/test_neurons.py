"""The neurons (spiking/neurons.py) on values worked out by hand, through every backend that runs
here (docs/algorithm.md, *Hidden LIF neuron*, *Pooling neuron*, *Output layer*, *Approximate
backward*).

Leak 0.5 and thresholds that are binary fractions keep every membrane exact, so forward values
compare with ``==``. The network-level checks (the reference against the authors' loop, every
backend against the reference) are in tests/test_parity.py.
"""
import gc
import math
import weakref

import pytest
import torch

import models
from spiking import (IFNeuron, LIFNeuron, OutputIntegrator, PoolingNeuron, backends,
                     leak_correction)

f64 = torch.float64
RUNNING = [name for name in backends.NAMES
           if backends.unavailable(name, torch.device("cpu")) is None]


@pytest.fixture(params=RUNNING)
def backend(request):
    """Each test below runs once per backend that runs on CPU tensors here."""
    with backends.use_backend(request.param):
        yield request.param


def values(*numbers: float) -> torch.Tensor:
    return torch.tensor(numbers, dtype=f64)


def column(*numbers: float) -> torch.Tensor:
    """A ``[T, 1]`` sequence for one neuron."""
    return values(*numbers).unsqueeze(1)


def run(neuron, current, grad, chunks=None):
    """``neuron`` over ``current`` ``[T, ...]`` in chunks of ``chunks`` steps (default: all at
    once): its spikes, the membrane after every chunk, and dLoss/dI for the loss
    ``sum_t grad_t * s_t``."""
    leaf = current.clone().requires_grad_()
    neuron.reset_state()
    outputs, membranes = [], []
    for part in leaf.split(chunks or current.shape[0]):
        outputs.append(neuron(part * 1.0))  # a non-leaf current, as a synapse's output is
        membranes.append(neuron.state.membrane.detach().clone())
    spikes = torch.cat(outputs)
    spikes.backward(grad)
    neuron.reset_state()
    return spikes.detach(), torch.stack(membranes), leaf.grad


def test_one_step_integrates_fires_strictly_and_resets_to_zero():
    neuron = LIFNeuron(threshold=1.0, leak=0.5)
    potential = neuron.charge(values(0.25, 0.5, 0.5, 0.0), values(0.5, 0.5, 0.75, 3.0))
    spikes = neuron.fire(potential)
    assert potential.tolist() == [0.75, 1.0, 1.25, 3.0]
    assert spikes.tolist() == [False, False, True, True]  # u = 1.0 is not > 1.0
    # below: m = l * u; at a spike: 0, a hard reset, not a subtraction of theta
    assert neuron.reset(potential, spikes).tolist() == [0.375, 0.5, 0.0, 0.0]


def test_the_backward_step_scales_at_a_spike_and_passes_the_membrane_gradient_elsewhere():
    grad = LIFNeuron().backward_step(grad_spikes=values(4.0, 4.0), grad_membrane=values(7.0, 7.0),
                                     spikes=values(1.0, 0.0).bool(), scale=0.25)
    assert grad.tolist() == [1.0, 7.0]  # spike: scale * g (the reset cuts the 7); else the 7


def test_leak_correction_by_hand():
    # spikes at t = 1 and t = 2 of T = 4 with l = 0.5: LF = 0.5^2 + 0.5^1 = 0.75, N = 2
    ng = leak_correction(values(0.75, 0.0), values(2.0, 0.0), 0.5)
    assert ng.tolist() == [1 + math.log(0.5) * 0.75 / 2, 0.0]  # a silent neuron: NG = 0


def test_leak_correction_of_a_long_train_is_the_formula():
    torch.manual_seed(0)
    spikes = torch.rand(100, 50) < 0.1
    neuron = LIFNeuron(leak=0.99)
    stats = neuron.spike_stats(torch.zeros(50, dtype=f64))
    for step in spikes:
        neuron.update_stats(stats, step)
    ng = leak_correction(*stats, 0.99)
    t = torch.arange(100, dtype=f64).unsqueeze(1)
    lf = (0.99 ** (99 - t) * spikes).sum(0)
    n = spikes.sum(0, dtype=f64)
    expected = (lf > 1e-3).to(f64) + math.log(0.99) * lf / (n + (n < 1e-3).to(f64))
    assert torch.allclose(ng, expected, rtol=1e-12, atol=0)
    fired = n > 0
    assert ng[fired].min() > 0.989 and ng[fired].max() < 0.997
    assert (ng[~fired] == 0).all()


def test_fires_at_the_first_step(backend):
    spikes, membranes, grad = run(LIFNeuron(1.0, 0.5), column(1.5, 0.2, 0.3), column(1, 2, 3), 1)
    assert spikes.squeeze(1).tolist() == [1.0, 0.0, 0.0]
    assert membranes.flatten().tolist() == [0.0, 0.1, 0.2]  # reset, 0.5*0.2, 0.5*(0.1+0.3)
    ng = 1 + math.log(0.5) * 0.25 / 1  # LF = 0.5^2 (spike at t=0, T=3), N = 1
    assert grad.squeeze(1).tolist() == pytest.approx([ng, 0.0, 0.0], rel=1e-15)


def test_fires_at_the_last_step_and_credits_every_earlier_current(backend):
    spikes, membranes, grad = run(LIFNeuron(1.0, 0.5), column(0.6, 0.4, 0.9), column(1, 2, 3), 1)
    assert spikes.squeeze(1).tolist() == [0.0, 0.0, 1.0]
    assert membranes.flatten().tolist() == [0.3, 0.35, 0.0]  # u = 0.6, 0.7, 1.25
    ng = 1 + math.log(0.5) * 1.0 / 1  # LF = 1, N = 1
    assert grad.squeeze(1).tolist() == pytest.approx([3 * ng] * 3, rel=1e-15)


def test_a_silent_neuron_passes_no_gradient(backend):
    spikes, _, grad = run(LIFNeuron(1.0, 0.99), column(0.2, 0.3, 0.1, 0.2), column(1, -2, 3, 4))
    assert spikes.sum() == 0
    assert torch.equal(grad, torch.zeros_like(grad))


def test_exactly_at_the_threshold_does_not_fire_and_leak_one_gives_ng_one(backend):
    current = column(0.5, 0.5, 0.25)  # u = 0.5, 1.0 (= threshold: no spike), 1.25
    spikes, membranes, grad = run(LIFNeuron(1.0, 1.0), current, column(7, 5, 3), 1)
    assert spikes.squeeze(1).tolist() == [0.0, 0.0, 1.0]
    assert membranes.flatten().tolist() == [0.5, 1.0, 0.0]
    assert grad.squeeze(1).tolist() == [3.0, 3.0, 3.0]  # NG = 1 + ln(1) * ... = 1


def test_a_single_time_step(backend):
    spikes, _, grad = run(LIFNeuron(1.0, 0.9), column(2.0), column(4.0))
    assert spikes.item() == 1.0
    assert grad.item() == pytest.approx(4.0 * (1 + math.log(0.9)), rel=1e-15)


def test_a_threshold_not_one_scales_the_gradient_and_two_spikes_share_ng(backend):
    current = column(1.5, 1.5, 3.0, 0.5)  # u = 1.5, 2.25 (spike), 3.0 (spike), 0.5
    spikes, membranes, grad = run(LIFNeuron(2.0, 0.5), current, column(1, 2, 3, 4), 1)
    assert spikes.squeeze(1).tolist() == [0.0, 1.0, 1.0, 0.0]
    assert membranes.flatten().tolist() == [0.75, 0.0, 0.0, 0.25]
    ng = 1 + math.log(0.5) * 0.75 / 2  # LF = 0.5^2 s_1 + 0.5 s_2, N = 2
    expected = [ng / 2 * 2.0, ng / 2 * 2.0, ng / 2 * 3.0, 0.0]
    assert grad.squeeze(1).tolist() == pytest.approx(expected, rel=1e-15)


def test_ng_is_that_of_the_whole_train_whenever_the_step_ran(backend):
    # The first step's spike gets NG of the whole train: a later spike changes it.
    one = run(LIFNeuron(1.0, 0.5), column(2.0, 0.0), column(1.0, 0.0), 1)[2]
    two = run(LIFNeuron(1.0, 0.5), column(2.0, 2.0), column(1.0, 0.0), 1)[2]
    assert one[0].item() == 1 + math.log(0.5) * 0.5 / 1   # LF = 0.5, N = 1
    assert two[0].item() == 1 + math.log(0.5) * 1.5 / 2   # LF = 0.5 + 1, N = 2


def test_if_neurons_have_no_leak_and_no_scale(backend):
    # theta = 0.75: u = 0.5, 1.0 (spike), 0.75 (= theta: no spike), 1.55 (spike)
    spikes, membranes, grad = run(IFNeuron(0.75), column(0.5, 0.5, 0.75, 0.8),
                                  column(1, 2, 3, 4), 1)
    assert spikes.squeeze(1).tolist() == [0.0, 1.0, 0.0, 1.0]
    assert membranes.flatten().tolist() == [0.5, 0.0, 0.75, 0.0]
    assert grad.squeeze(1).tolist() == [2.0, 2.0, 4.0, 4.0]


def test_the_pooling_neuron_averages_windows_and_spreads_the_gradient(backend):
    image = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=f64).view(1, 1, 1, 2, 2)
    spikes, membranes, grad = run(PoolingNeuron(0.5, 2), image, torch.full((1, 1, 1, 1, 1), 3.0))
    assert spikes.item() == 1.0 and membranes.item() == 0.0  # mean 0.75 > 0.5
    assert grad.flatten().tolist() == [0.75] * 4  # g / (k * k)


def test_the_output_integrator_leaks_in_value_not_in_gradient(backend):
    current = values(1.0, 2.0, 3.0).view(3, 1, 1).requires_grad_()
    out = OutputIntegrator(leak=0.5, threshold=2.0)(current)
    assert out.item() == 2.125 / 6  # M = 0.5, 1.25, 2.125; output M_T / (theta T)
    out.backward(values(6.0).view(1, 1))
    assert current.grad.flatten().tolist() == [1.0, 1.0, 1.0]


def test_batched_neurons_are_independent(backend):
    torch.manual_seed(1)
    current = torch.rand(6, 3, 4, dtype=f64) * 0.8
    grad = torch.randn(6, 3, 4, dtype=f64)
    neuron = LIFNeuron(1.0, 0.99)
    together = run(neuron, current, grad)[2]
    for b in range(3):
        for n in range(4):
            alone = run(neuron, current[:, b, n:n + 1], grad[:, b, n:n + 1])[2]
            assert torch.equal(together[:, b, n:n + 1], alone)


@pytest.mark.parametrize("kind", ["lif", "if", "pool"])
def test_chunks_with_a_state_equal_one_call_over_all_steps(backend, kind):
    # Membranes, NG (LIF) and the backward's carry cross chunk boundaries: spikes and gradients
    # equal one call over the whole sequence, bit for bit.
    torch.manual_seed(4)
    current = torch.rand(9, 2, 3, 4, 4, dtype=f64) * (1.0 if kind == "pool" else 0.7)
    if kind == "pool":
        current = (current > 0.5).to(f64)  # the pooling neuron's input is spikes
    neuron = {"lif": LIFNeuron(1.0, 0.95), "if": IFNeuron(0.75), "pool": PoolingNeuron(0.75)}[kind]
    with torch.no_grad():
        grad = torch.randn(neuron(current).shape, dtype=f64)
    neuron.reset_state()
    whole = run(neuron, current, grad)
    assert whole[0].any() and whole[2].abs().sum() > 0
    for chunks in ([4, 4, 1], 1):
        spikes, _, grad_current = run(neuron, current, grad, chunks)
        assert torch.equal(spikes, whole[0]) and torch.equal(grad_current, whole[2])


def test_inplace_gives_the_same_spikes_and_gradients(backend):
    torch.manual_seed(2)
    current = torch.rand(7, 3, 5, dtype=f64) * 0.9
    grad = torch.randn(7, 3, 5, dtype=f64)
    results = []
    for inplace in (False, True):
        leaf = current.clone().requires_grad_()
        fresh = leaf * 1.0
        spikes = LIFNeuron(1.0, 0.95, inplace=inplace)(fresh)
        overwritten = spikes.data_ptr() == fresh.data_ptr()
        assert overwritten == (inplace and backend != "reference")  # it records every step
        spikes.backward(grad)
        results.append((spikes.detach(), leaf.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    untouched = current.clone()
    LIFNeuron(1.0, 0.95)(untouched)
    assert torch.equal(untouched, current)


def test_the_backward_keeps_only_the_boolean_spikes(backend):
    current = torch.rand(5, 2, 3, dtype=f64, requires_grad=True)
    spikes = LIFNeuron(0.5, 0.99)(current)
    if backend == "reference":  # one node per step, each keeping its step's spikes
        assert spikes.grad_fn.name() == "CatBackward0"
        return
    saved = spikes.grad_fn.saved  # the kernels' record of the chunk, kept by the node
    assert saved.kept.dtype == torch.bool and saved.kept.shape == current.shape
    assert saved.start is None and saved.currents is None
    assert not spikes.grad_fn.saved_tensors


def test_a_state_of_another_shape_is_an_error(backend):
    neuron = LIFNeuron()
    neuron(torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="reset the state"):
        neuron(torch.rand(2, 5, 4))


def test_a_training_step_frees_its_graph_and_neuron_states(backend):
    # The backward must not keep the neuron state (which holds the membrane, an output of the
    # same autograd node): that reference cycle runs through C++ and is never collected, so
    # every training step would leak its whole graph.
    torch.manual_seed(0)
    model = models.get_model("lenet", width=0.1)
    model.time_chunk = 2
    states = []
    model.lif1.register_forward_hook(lambda module, *_: states.append(weakref.ref(module.state)))
    spikes = (torch.rand(4, 2, 1, 28, 28) < 0.3).float()
    model(spikes).square().sum().backward()
    gc.collect()
    assert len(states) == 2 and all(ref() is None for ref in states)
