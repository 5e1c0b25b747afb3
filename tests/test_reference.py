"""The reference's step functions (spiking/reference.py) on values worked out by hand.

Leak 0.5 and thresholds that are binary fractions keep every membrane exact, so forward values
compare with ``==``. The network-level checks (the reference against the authors' loop, every
backend against the reference) are in tests/test_parity.py.
"""
import math

import pytest
import torch

from spiking import backend, reference
from spiking import functional as SF

f64 = torch.float64


def values(*numbers: float) -> torch.Tensor:
    return torch.tensor(numbers, dtype=f64)


def test_forward_step_integrates_and_leaks_below_the_threshold():
    spikes, membrane = reference.lif_forward_step(values(0.5, 0.25), values(0.25, 0.5), 1.0, 0.5)
    assert spikes.tolist() == [0.0, 0.0]
    assert membrane.tolist() == [0.375, 0.375]  # m = l * (m + I) = 0.5 * 0.75


def test_forward_step_exactly_at_the_threshold_does_not_fire():
    spikes, membrane = reference.lif_forward_step(values(0.5), values(0.5), 1.0, 0.5)
    assert spikes.tolist() == [0.0]  # u = 1.0 is not > 1.0
    assert membrane.tolist() == [0.5]


def test_forward_step_above_the_threshold_fires_and_resets_to_zero():
    spikes, membrane = reference.lif_forward_step(values(0.75, 3.0), values(0.5, 0.0), 1.0, 0.5)
    assert spikes.tolist() == [1.0, 1.0]  # u = 1.25 and 3.0: a hard reset, not a subtraction
    assert membrane.tolist() == [0.0, 0.0]


def test_backward_step_scales_at_a_spike_and_passes_the_membrane_gradient_elsewhere():
    grad = reference.lif_backward_step(grad_spikes=values(4.0, 4.0), grad_membrane=values(7.0, 7.0),
                                       spikes=values(1.0, 0.0), spike_scale=0.25)
    assert grad.tolist() == [1.0, 7.0]  # spike: scale * g (the reset cuts the 7); else the 7


def test_leak_correction_by_hand():
    # spikes at t = 1 and t = 2 of T = 4 with l = 0.5: LF = 0.5^2 + 0.5^1 = 0.75, N = 2
    ng = reference.leak_correction(values(0.75, 0.0), values(2.0, 0.0), 0.5)
    assert ng.tolist() == [1 + math.log(0.5) * 0.75 / 2, 0.0]  # a silent neuron: NG = 0


def run_steps(step, currents, grads):
    """Feed ``currents`` [T, ...] to ``step`` one step at a time with a fresh state; return the
    spikes, the membranes after each step and dLoss/dI for the loss ``sum_t grads_t * s_t``."""
    currents = currents.clone().requires_grad_()
    state = SF.NeuronState()
    spikes, membranes = [], []
    for current in currents:
        spikes.append(step(current, state))
        membranes.append(state.membrane.detach().clone())
    spikes = torch.stack(spikes)
    (spikes * grads).sum().backward()
    return spikes.detach(), torch.stack(membranes), currents.grad, state


def test_lif_steps_by_hand_with_ng_from_the_whole_train():
    # theta = 2, l = 0.5, I = 1.5, 1.5, 3.0, 0.5: u = 1.5, 2.25 (spike), 3.0 (spike), 0.5
    spikes, membranes, grad, state = run_steps(
        lambda current, state: reference.lif_step(current, state, 2.0, 0.5),
        values(1.5, 1.5, 3.0, 0.5), values(1.0, 2.0, 3.0, 4.0))
    assert spikes.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert membranes.tolist() == [0.75, 0.0, 0.0, 0.25]
    assert state.sums.trace.item() == 0.75 and state.sums.count.item() == 2  # LF and N of the whole train
    ng = 1 + math.log(0.5) * 0.75 / 2
    # delta_t = NG/theta g_t at a spike, else delta_{t+1}; delta_T = 0
    assert grad.tolist() == pytest.approx([ng / 2 * 2.0, ng / 2 * 2.0, ng / 2 * 3.0, 0.0],
                                          rel=1e-15)


def test_ng_is_read_when_the_backward_runs_not_when_the_step_ran():
    # The first step's spike gets NG of the whole train: a later spike changes it.
    one = run_steps(lambda current, state: reference.lif_step(current, state, 1.0, 0.5),
                    values(2.0, 0.0), values(1.0, 0.0))[2]
    two = run_steps(lambda current, state: reference.lif_step(current, state, 1.0, 0.5),
                    values(2.0, 2.0), values(1.0, 0.0))[2]
    assert one[0].item() == 1 + math.log(0.5) * 0.5 / 1   # LF = 0.5, N = 1
    assert two[0].item() == 1 + math.log(0.5) * 1.5 / 2   # LF = 0.5 + 1, N = 2


def test_if_steps_have_no_leak_and_no_scale():
    # theta = 0.75: u = 0.5, 1.0 (spike), 0.75 (= theta: no spike), 1.55 (spike)
    spikes, membranes, grad, _ = run_steps(
        lambda current, state: reference.if_step(current, state, 0.75),
        values(0.5, 0.5, 0.75, 0.8), values(1.0, 2.0, 3.0, 4.0))
    assert spikes.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert membranes.tolist() == [0.5, 0.0, 0.75, 0.0]
    assert grad.tolist() == [2.0, 2.0, 4.0, 4.0]


def test_pooling_step_averages_2x2_windows_and_spreads_the_gradient():
    spikes = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=f64).view(1, 1, 2, 2).requires_grad_()
    state = SF.NeuronState()
    out = reference.pooling_step(spikes, state, 0.5, 2)
    assert out.item() == 1.0 and state.membrane.item() == 0.0  # mean 0.75 > 0.5
    (3.0 * out).sum().backward()
    assert spikes.grad.flatten().tolist() == [0.75] * 4  # g / (k * k)


def test_output_steps_leak_in_value_not_in_gradient():
    current = values(1.0, 2.0, 3.0).unsqueeze(1).requires_grad_()
    out = reference.output_integrator(current, leak=0.5, threshold=2.0)
    assert out.item() == 2.125 / 6  # M = 0.5, 1.25, 2.125; output M_T / (theta T)
    out.backward(values(6.0))
    assert current.grad.flatten().tolist() == [1.0, 1.0, 1.0]


def test_the_reference_backend_runs_the_reference_functions(monkeypatch):
    calls = []
    original = reference.lif_step
    monkeypatch.setattr(reference, "lif_step",
                        lambda *args: calls.append(1) or original(*args))
    current = torch.rand(3, 2, 4, dtype=f64)
    with backend.use_backend("reference"):
        assert backend.backend_for("cpu") == "reference"
        stepped = SF.lif_neuron(current, 0.5, 0.9)
    assert len(calls) == 3
    with backend.use_backend("torch"):
        assert torch.equal(SF.lif_neuron(current, 0.5, 0.9), stepped)


@pytest.mark.parametrize("neuron", ["lif", "if", "pool"])
def test_reference_chunks_with_a_state_equal_one_call(neuron):
    torch.manual_seed(4)
    current = torch.rand(6, 2, 3, 4, 4, dtype=f64)
    if neuron == "pool":
        current = (current > 0.5).to(f64)
    else:
        current *= 0.7
    run = {"lif": lambda x, s: reference.lif_neuron(x, 1.0, 0.95, state=s),
           "if": lambda x, s: reference.if_neuron(x, 0.75, state=s),
           "pool": lambda x, s: reference.pooling_neuron(x, 0.75, 2, state=s)}[neuron]
    grad = torch.randn(run(current, None).shape, dtype=f64)
    results = []
    for sizes in ([6], [4, 2], [1] * 6):
        leaf = current.clone().requires_grad_()
        state = SF.NeuronState()
        spikes = torch.cat([run(part, state) for part in leaf.split(sizes)])
        spikes.backward(grad)
        results.append((spikes.detach(), leaf.grad))
    assert results[0][0].any() and results[0][1].abs().sum() > 0
    for spikes, grad_current in results[1:]:
        assert torch.equal(spikes, results[0][0]) and torch.equal(grad_current, results[0][1])


def test_the_reference_frees_its_graph_and_neuron_states():
    # As for the fast paths (tests/test_functional.py): the per-step backward keeps the sums,
    # not the state that holds the membrane it outputs.
    import gc
    import weakref

    state = SF.NeuronState()
    current = torch.rand(3, 4, requires_grad=True)
    reference.lif_neuron(current, 0.5, 0.9, state=state).sum().backward()
    ref = weakref.ref(state)
    del state
    gc.collect()
    assert ref() is None
