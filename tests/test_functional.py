"""Golden values of the neuron dynamics and their gradients, worked out by hand (docs/algorithm.md, *Hidden LIF
neuron*, *Pooling neuron*, *Output layer*, *Approximate backward*).

Leak 0.5 keeps every membrane an exact binary fraction, so forward values compare exactly.
"""
import math

import pytest
import torch

from spiking import functional as SF

f64 = torch.float64


def column(*values: float) -> torch.Tensor:
    """A ``[T, 1]`` sequence for one neuron."""
    return torch.tensor(values, dtype=f64).unsqueeze(1)


def lif_with_grad(current, grad, threshold, leak):
    current = current.clone().requires_grad_()
    spikes = SF.lif_neuron(current, threshold, leak)
    spikes.backward(grad)
    return spikes.detach(), current.grad


def membrane(current, threshold, leak):
    out = torch.empty_like(current)
    spikes = SF.lif_scan(current, threshold, leak, membrane_out=out)
    return spikes.bool(), out


def test_fires_at_first_step():
    current = column(1.5, 0.2, 0.3)
    spikes, mem = membrane(current, 1.0, 0.5)
    assert spikes.squeeze(1).tolist() == [True, False, False]
    assert mem.squeeze(1).tolist() == [0.0, 0.1, 0.2]  # reset to 0, then 0.5*0.2, 0.5*(0.1+0.3)
    _, grad = lif_with_grad(current, column(1.0, 2.0, 3.0), 1.0, 0.5)
    ng = 1 + math.log(0.5) * 0.25 / 1  # LF = 0.5^2 (spike at t=0, T=3), N = 1
    assert grad.squeeze(1).tolist() == pytest.approx([ng, 0.0, 0.0], rel=1e-15)


def test_fires_at_last_step_credits_every_earlier_current():
    current = column(0.6, 0.4, 0.9)
    spikes, mem = membrane(current, 1.0, 0.5)
    assert spikes.squeeze(1).tolist() == [False, False, True]
    assert mem.squeeze(1).tolist() == [0.3, 0.35, 0.0]  # u = 0.6, 0.7, 1.25
    _, grad = lif_with_grad(current, column(1.0, 2.0, 3.0), 1.0, 0.5)
    ng = 1 + math.log(0.5) * 1.0 / 1  # LF = 1, N = 1
    assert grad.squeeze(1).tolist() == pytest.approx([3 * ng] * 3, rel=1e-15)


def test_silent_neuron_passes_no_gradient():
    current = column(0.2, 0.3, 0.1, 0.2)
    spikes, grad = lif_with_grad(current, column(1.0, -2.0, 3.0, 4.0), 1.0, 0.99)
    assert spikes.sum() == 0
    assert torch.equal(grad, torch.zeros_like(grad))
    assert SF.leak_correction(spikes.bool(), 0.99, f64).item() == 0.0


def test_exactly_at_threshold_does_not_fire_and_leak_one_gives_ng_one():
    current = column(0.5, 0.5, 0.25)  # u = 0.5, 1.0 (= threshold: no spike), 1.25
    spikes, mem = membrane(current, 1.0, 1.0)
    assert spikes.squeeze(1).tolist() == [False, False, True]
    assert mem.squeeze(1).tolist() == [0.5, 1.0, 0.0]
    _, grad = lif_with_grad(current, column(7.0, 5.0, 3.0), 1.0, 1.0)
    assert grad.squeeze(1).tolist() == [3.0, 3.0, 3.0]  # NG = 1 + ln(1) * ... = 1


def test_single_time_step():
    current = column(2.0)
    spikes, grad = lif_with_grad(current, column(4.0), 1.0, 0.9)
    assert spikes.item() == 1.0
    assert grad.item() == pytest.approx(4.0 * (1 + math.log(0.9)), rel=1e-15)


def test_threshold_not_one_scales_gradient_and_two_spikes_share_ng():
    current = column(1.5, 1.5, 3.0, 0.5)  # u = 1.5, 2.25 (spike), 3.0 (spike), 0.5
    spikes, mem = membrane(current, 2.0, 0.5)
    assert spikes.squeeze(1).tolist() == [False, True, True, False]
    assert mem.squeeze(1).tolist() == [0.75, 0.0, 0.0, 0.25]
    _, grad = lif_with_grad(current, column(1.0, 2.0, 3.0, 4.0), 2.0, 0.5)
    lf = 0.75  # 0.5^2 * s_1 + 0.5 * s_2
    ng = 1 + math.log(0.5) * lf / 2
    expected = [ng / 2 * 2.0, ng / 2 * 2.0, ng / 2 * 3.0, 0.0]
    assert grad.squeeze(1).tolist() == pytest.approx(expected, rel=1e-15)


def test_leak_correction_matches_spec_formula_for_long_train():
    torch.manual_seed(0)
    spikes = torch.rand(100, 50) < 0.1
    ng = SF.leak_correction(spikes, 0.99, f64)
    t = torch.arange(100, dtype=f64).unsqueeze(1)
    lf = (0.99 ** (99 - t) * spikes).sum(0)
    n = spikes.sum(0, dtype=f64)
    expected = (lf > 1e-3).to(f64) + math.log(0.99) * lf / (n + (n < 1e-3).to(f64))
    assert torch.allclose(ng, expected, rtol=1e-12, atol=0)
    fired = n > 0
    assert ng[fired].min() > 0.989 and ng[fired].max() < 0.997
    assert (ng[~fired] == 0).all()


def test_pooling_neuron_threshold_and_plain_gradient():
    current = column(0.5, 0.5, 0.75, 0.8)  # u = 0.5, 1.0 (spike), 0.75 (= threshold), 1.55 (spike)
    current.requires_grad_()
    spikes = SF.if_neuron(current, 0.75)
    assert spikes.squeeze(1).tolist() == [0.0, 1.0, 0.0, 1.0]
    spikes.backward(column(1.0, 2.0, 3.0, 4.0))
    assert current.grad.squeeze(1).tolist() == [2.0, 2.0, 4.0, 4.0]


def test_output_integrator_value_leaks_gradient_does_not():
    current = torch.tensor([[1.0], [2.0], [3.0]], dtype=f64, requires_grad=True)
    out = SF.output_integrator(current, leak=0.5, threshold=2.0)
    # M = 0.5*1 = 0.5; 0.5*(0.5+2) = 1.25; 0.5*(1.25+3) = 2.125; output = M / (theta * T)
    assert out.item() == 2.125 / 6
    out.backward(torch.tensor([6.0], dtype=f64))
    assert current.grad.squeeze(1).tolist() == [1.0, 1.0, 1.0]


def test_batched_neurons_are_independent():
    torch.manual_seed(1)
    current = torch.rand(6, 3, 4, dtype=f64) * 0.8
    grad = torch.randn(6, 3, 4, dtype=f64)
    _, together = lif_with_grad(current, grad, 1.0, 0.99)
    for b in range(3):
        for n in range(4):
            _, alone = lif_with_grad(current[:, b, n:n + 1], grad[:, b, n:n + 1], 1.0, 0.99)
            assert torch.equal(together[:, b, n:n + 1], alone)


def test_backward_saves_no_float_membrane():
    current = torch.rand(5, 2, 3, dtype=f64, requires_grad=True)
    spikes = SF.lif_neuron(current, 0.5, 0.99)
    saved = spikes.grad_fn.saved_tensors
    assert [t.dtype for t in saved] == [torch.bool]


def test_inplace_neuron_gives_the_same_spikes_and_gradients():
    torch.manual_seed(2)
    current = torch.rand(7, 3, 5, dtype=f64) * 0.9
    grad = torch.randn(7, 3, 5, dtype=f64)
    results = []
    for inplace in (False, True):
        leaf = current.clone().requires_grad_()
        fresh = leaf * 1.0  # a non-leaf current, as a synapse's output is
        spikes = SF.lif_neuron(fresh, 1.0, 0.95, inplace=inplace)
        assert (spikes.data_ptr() == fresh.data_ptr()) == inplace
        spikes.backward(grad)
        results.append((spikes.detach(), leaf.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    untouched = current.clone()
    SF.lif_neuron(untouched, 1.0, 0.95)
    assert torch.equal(untouched, current)


@pytest.mark.parametrize("neuron", ["lif", "if", "pool"])
def test_chunks_with_a_state_equal_one_call_over_all_steps(neuron):
    # Membranes, NG (LIF) and the backward's delta carry over chunk boundaries: spikes and
    # gradients equal one call over the whole sequence, bit for bit.
    torch.manual_seed(4)
    shape = (9, 2, 3, 4, 4)
    current = torch.rand(shape, dtype=f64) * (1.0 if neuron == "pool" else 0.7)
    if neuron == "pool":
        current = (current > 0.5).to(f64)  # the pooling neuron's input is spikes

    def run(x, state=None):
        if neuron == "lif":
            return SF.lif_neuron(x, 1.0, 0.95, state=state)
        if neuron == "if":
            return SF.if_neuron(x, 0.75, state=state)
        return SF.pooling_neuron(x, 0.75, 2, state=state)

    grad = torch.randn(run(current).shape, dtype=f64)
    results = []
    for sizes in ([9], [4, 4, 1], [1] * 9):
        leaf = current.clone().requires_grad_()
        state = SF.NeuronState()
        spikes = torch.cat([run(part, state) for part in leaf.split(sizes)])
        spikes.backward(grad)
        results.append((spikes.detach(), leaf.grad))
    whole = results[0]
    assert whole[0].any() and whole[1].abs().sum() > 0
    for spikes, grad_current in results[1:]:
        assert torch.equal(spikes, whole[0]) and torch.equal(grad_current, whole[1])


def test_state_of_another_shape_is_an_error():
    state = SF.NeuronState()
    SF.lif_neuron(torch.rand(2, 3, 4), state=state)
    with pytest.raises(ValueError, match="reset the state"):
        SF.lif_neuron(torch.rand(2, 5, 4), state=state)


def test_a_training_step_frees_its_graph_and_neuron_states():
    # The backward must not keep the neuron state (which holds the membrane, an output of the
    # same autograd node): that reference cycle runs through C++ and is never collected, so
    # every training step would leak its whole graph.
    import gc
    import weakref

    import models

    torch.manual_seed(0)
    model = models.get_model("lenet", width=0.1)
    model.time_chunk = 2
    states = []
    model.lif1.register_forward_hook(lambda module, *_: states.append(weakref.ref(module.state)))
    spikes = (torch.rand(4, 2, 1, 28, 28) < 0.3).float()
    model(spikes).square().sum().backward()
    gc.collect()
    assert len(states) == 2 and all(ref() is None for ref in states)
