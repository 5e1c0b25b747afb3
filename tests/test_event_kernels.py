"""The event-driven synapses equal the dense ones, and keep their contract.

Kernels (spiking/backends/event_kernels.py) against F.conv2d / F.linear and their autograd, for
every geometry the networks use, signed and scaled spikes, float32 (to rounding) and float64; the
input gradient equals the dense one at every input spike and is 0 elsewhere. Layers under the
``cpu`` backend: a synapse declared to read neuron spikes gets that sparse input gradient, any
other the dense one; the path follows the density threshold, the backend and autocast. The
float64 parity of whole networks through the event path against the authors' loop is in
tests/test_parity.py.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from spiking import SpikingConv2d, SpikingLinear, backends
from spiking.backends import cpu, event_kernels

pytestmark = pytest.mark.skipif(not event_kernels.available(),
                                reason="no C compiler: the event kernels cannot be built")

# (C_in, C_out, k, stride, padding, H): LeNet's 5x5, VGG's and ResNet's 3x3 (stride 1 and 2),
# ResNet's 1x1 shortcuts (stride 1 and 2), an odd size that drops a row at stride 2
GEOMETRIES = [(3, 10, 5, 1, 2, 9), (4, 12, 3, 1, 1, 8), (4, 9, 3, 2, 1, 8), (5, 11, 1, 1, 0, 6),
              (5, 11, 1, 2, 0, 7), (3, 17, 3, 2, 1, 7)]
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12,
                                                                            atol=1e-12)}


def signed_spikes(shape, dtype, density=0.1, scale=1.25, seed=0):
    """-scale, 0, scale with about ``density`` nonzero, a third of them negative."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    return (((u < density * 2 / 3).double() - (u > 1 - density / 3).double()) * scale).to(dtype)


@pytest.fixture
def events_always(monkeypatch):
    """The event-driven path for every spike train, whatever its density."""
    monkeypatch.setattr(cpu, "EVENT_DENSITY_MAX", 1.0)


def events_of(x):
    return event_kernels.find_events(x)


def spike_train(events):
    """The spike train ``[images, *image_shape]`` of ``events`` again."""
    size = math.prod(events.image_shape)
    out = torch.zeros(events.images * size, dtype=events.dtype)
    image = torch.repeat_interleave(torch.arange(events.images), events.offsets.diff())
    codes = events.positions.long()
    negative = codes < 0
    index = torch.where(negative, ~codes, codes) + image * size
    out[index] = torch.where(negative, -events.scale, events.scale).to(events.dtype)
    return out.view(events.images, *events.image_shape)


def channels_last(weight):
    return (weight.permute(1, 2, 3, 0) if weight.dim() == 4 else weight.t()[:, None, None]
            ).contiguous()


def dense_gradients(x, weight, grad, stride, padding):
    x, weight = x.clone().requires_grad_(), weight.clone().requires_grad_()
    out = (F.conv2d(x, weight, None, stride, padding) if weight.dim() == 4
           else F.linear(x, weight))
    out.backward(grad)
    return out.detach(), weight.grad, x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES + ["linear"], ids=str)
def test_kernels_equal_the_dense_layer_and_its_gradients(geometry, dtype):
    gen = torch.Generator().manual_seed(1)
    if geometry == "linear":
        x = signed_spikes((13, 70), dtype)
        weight = torch.randn((23, 70), generator=gen, dtype=torch.float64).to(dtype)
        stride, padding = 1, 0
    else:
        cin, cout, k, stride, padding, size = geometry
        x = signed_spikes((6, cin, size, size), dtype)
        weight = torch.randn((cout, cin, k, k), generator=gen, dtype=torch.float64).to(dtype)
    events = events_of(x)
    assert events is not None and events.scale == 1.25 and torch.equal(spike_train(events), x)
    out_shape = (F.conv2d(x, weight, None, stride, padding).shape if weight.dim() == 4
                 else (13, 23))
    grad = torch.randn(out_shape, generator=gen, dtype=torch.float64).to(dtype)
    expected, grad_weight, grad_input = dense_gradients(x, weight, grad, stride, padding)

    out = event_kernels.conv_forward(events, channels_last(weight), stride, padding)
    weight_cl, input_at_events = event_kernels.conv_backward(events, channels_last(weight), grad,
                                                             stride, padding)
    torch.testing.assert_close(out, expected, **TOLERANCE[dtype])
    relaid = weight_cl.permute(3, 0, 1, 2) if weight.dim() == 4 else weight_cl.flatten(1).t()
    torch.testing.assert_close(relaid, grad_weight, **TOLERANCE[dtype])
    spiked = x != 0
    assert spiked.any() and (~spiked).any()
    torch.testing.assert_close(input_at_events[spiked], grad_input[spiked], **TOLERANCE[dtype])
    assert (input_at_events[~spiked] == 0).all()


def test_extraction_refuses_what_is_not_one_spike_magnitude():
    x = signed_spikes((4, 3, 5, 5), torch.float32)
    assert events_of(x) is not None
    two_magnitudes = x.clone()
    two_magnitudes.view(-1)[int((x.view(-1) != 0).nonzero()[-1])] = 0.5
    assert events_of(two_magnitudes) is None
    with_nan = x.clone()
    with_nan.view(-1)[7] = float("nan")
    assert events_of(with_nan) is None
    infinite = x.clone()
    infinite[x != 0] = float("inf")
    assert events_of(infinite) is None
    silent = events_of(torch.zeros(3, 4))
    assert silent.positions.numel() == 0 and silent.density == 0
    weight = torch.randn(5, 4)
    assert (event_kernels.conv_forward(silent, channels_last(weight)) == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_events_are_found_in_one_pass_up_to_a_limit(dtype):
    # 3 threads of the search (enough entries for 3), each scanning a third of the images
    x = signed_spikes((60, 7, 25, 25), dtype, density=0.05)
    spikes = int((x != 0).sum())
    crowded = x.clone()
    crowded[20:] = 0  # every event in the first thread's third: its share of the buffer overflows
    two_magnitudes = x.clone()
    two_magnitudes[40:] *= 2  # each third is a spike train, but not with one magnitude
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        exact = event_kernels.find_events(x, spikes)  # some third holds more than its share
        loose = event_kernels.find_events(x)  # every third within its share: moved together
        too_many = event_kernels.find_events(x, spikes - 1)
        crowded_events = event_kernels.find_events(crowded, int((crowded != 0).sum()))
        mixed = event_kernels.find_events(two_magnitudes)
    finally:
        torch.set_num_threads(previous)
    assert exact is not None and torch.equal(spike_train(exact), x) and exact.scale == 1.25
    assert exact.positions.numel() == spikes and exact.offsets[-1] == spikes
    assert torch.equal(loose.positions, exact.positions) and torch.equal(loose.offsets,
                                                                         exact.offsets)
    assert too_many is None
    assert crowded_events is not None and torch.equal(spike_train(crowded_events), crowded)
    assert mixed is None


def test_kernels_refuse_arguments_that_would_overrun_a_buffer():
    x = signed_spikes((2, 3, 6, 6), torch.float32)
    events = events_of(x)
    weight_cl = channels_last(torch.randn(4, 3, 3, 3))
    with pytest.raises(ValueError, match="does not fit"):
        event_kernels.conv_forward(events, channels_last(torch.randn(4, 2, 3, 3)), 1, 1)
    with pytest.raises(ValueError, match="does not fit"):
        event_kernels.conv_forward(events, channels_last(torch.randn(4, 3, 33, 33)), 1, 16)
    with pytest.raises(ValueError, match="does not fit"):
        event_kernels.conv_forward(events, weight_cl, 0, 1)
    with pytest.raises(ValueError, match="dtype"):
        event_kernels.conv_forward(events, weight_cl.double(), 1, 1)
    with pytest.raises(ValueError, match="grad has shape"):
        event_kernels.conv_backward(events, weight_cl, torch.zeros(2, 4, 5, 5), 1, 1)
    bad = event_kernels.Events(events.offsets, events.positions.clone(), events.scale,
                               events.image_shape, events.dtype)
    bad.positions[0] = 3 * 6 * 6
    with pytest.raises(ValueError, match="inconsistent"):
        event_kernels.conv_forward(bad, weight_cl, 1, 1)
    short = event_kernels.Events(events.offsets, events.positions[:-1], events.scale,
                                 events.image_shape, events.dtype)
    with pytest.raises(ValueError, match="inconsistent"):
        event_kernels.conv_forward(short, weight_cl, 1, 1)


def layer_gradients(layer, spikes):
    """Output and gradients of ``layer`` on ``spikes`` ``[T, B, ...]`` fed through a scale
    parameter (a non-spiking module whose gradient needs the full input gradient)."""
    layer.zero_grad()
    gain = torch.ones((), dtype=spikes.dtype, requires_grad=True)
    x = spikes.clone().requires_grad_()
    out = layer(x * gain)
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape))
    return out.detach(), layer.weight.grad.clone(), x.grad, gain.grad


def both_paths(layer, spikes):
    with backends.use_backend("cpu"):
        event = layer_gradients(layer, spikes)
    assert layer.event_chunks == 1 and layer.dense_chunks == 0
    with backends.use_backend("torch"):
        dense = layer_gradients(layer, spikes)
    assert layer.dense_chunks == 1
    return event, dense


@pytest.mark.parametrize("make", [lambda: SpikingConv2d(3, 6, 3, stride=2, padding=1),
                                  lambda: SpikingLinear(40, 7)], ids=["conv", "linear"])
@pytest.mark.parametrize("from_neurons", [True, False], ids=["from-neurons", "undeclared"])
def test_the_input_gradient_is_sparse_only_where_declared(make, from_neurons, events_always):
    layer = make().double()
    layer.input_from_neurons = from_neurons
    shape = (3, 2, 3, 8, 8) if isinstance(layer, SpikingConv2d) else (3, 2, 40)
    spikes = signed_spikes(shape, torch.float64, density=0.1, scale=1.0 / 0.8)
    (out, grad_weight, grad_input, grad_gain), dense = both_paths(layer, spikes)
    tolerance = TOLERANCE[torch.float64]
    torch.testing.assert_close(out, dense[0], **tolerance)
    torch.testing.assert_close(grad_weight, dense[1], **tolerance)
    spiked = spikes != 0
    torch.testing.assert_close(grad_input[spiked], dense[2][spiked], **tolerance)
    if from_neurons:
        assert (grad_input[~spiked] == 0).all() and (dense[2][~spiked] != 0).any()
    else:  # fed by anything else: the full gradient, also where nothing spiked
        torch.testing.assert_close(grad_input, dense[2], **tolerance)
        torch.testing.assert_close(grad_gain, dense[3], **tolerance)


def test_the_path_follows_density_backend_and_precision(monkeypatch):
    layer = SpikingConv2d(2, 4, 3, padding=1)
    sparse = signed_spikes((2, 2, 2, 6, 6), torch.float32, density=0.05)
    dense = signed_spikes((2, 2, 2, 6, 6), torch.float32, density=0.5)
    monkeypatch.setattr(cpu, "EVENT_DENSITY_MAX", 0.2)
    with backends.use_backend("cpu"):
        layer(sparse)
        assert (layer.event_chunks, layer.dense_chunks) == (1, 0)
        layer(dense)
        assert (layer.event_chunks, layer.dense_chunks) == (1, 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(sparse)
        assert (layer.event_chunks, layer.dense_chunks) == (1, 2)
        layer(torch.rand(2, 2, 2, 6, 6))  # not spikes: many magnitudes
        assert layer.event_chunks == 1
        monkeypatch.setattr(cpu, "EVENT_DENSITY_MAX", 0.0)
        layer(sparse)
        assert layer.event_chunks == 1
    with backends.use_backend("torch"):
        monkeypatch.setattr(cpu, "EVENT_DENSITY_MAX", 1.0)
        layer(sparse)
    assert layer.event_chunks == 1


def test_evaluation_without_autograd_equals_the_dense_layer(events_always):
    layer = SpikingConv2d(3, 5, 5, padding=2)
    spikes = signed_spikes((2, 3, 3, 9, 9), torch.float32)
    with torch.no_grad(), backends.use_backend("cpu"):
        event = layer(spikes)
    assert layer.event_chunks == 1
    with torch.no_grad(), backends.use_backend("torch"):
        dense = layer(spikes)
    torch.testing.assert_close(event, dense, **TOLERANCE[torch.float32])


def test_the_relaid_weight_follows_updates(events_always):
    layer = SpikingLinear(30, 4)
    spikes = signed_spikes((2, 2, 30), torch.float32, density=0.2)
    with torch.no_grad(), backends.use_backend("cpu"):
        before = layer(spikes)
        layer.weight.mul_(2)
        after = layer(spikes)
    torch.testing.assert_close(after, 2 * before)


def test_each_kind_of_layer_has_its_own_crossover(monkeypatch):
    monkeypatch.setattr(cpu, "EVENT_DENSITY_MAX", {"conv": 0.2, "linear": 0.02})
    conv, linear = SpikingConv2d(2, 3, 1), SpikingLinear(72, 3)
    spikes = signed_spikes((2, 2, 2, 6, 6), torch.float32, density=0.05)
    with backends.use_backend("cpu"):
        conv(spikes)
        linear(spikes.flatten(2))
    assert (conv.event_chunks, linear.event_chunks) == (1, 0)
    assert cpu.event_density_max("linear") == 0.02


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_threads_split_the_events_and_sum_their_weight_gradients(dtype):
    # enough work for 3 threads (65536 multiply-adds each): several partial weight gradients
    x = signed_spikes((40, 8, 12, 12), dtype, density=0.2)
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn((32, 8, 3, 3), generator=gen, dtype=torch.float64).to(dtype)
    grad = torch.randn((40, 32, 6, 6), generator=gen, dtype=torch.float64).to(dtype)
    events = events_of(x)
    results = {}
    previous = torch.get_num_threads()
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            out = event_kernels.conv_forward(events, channels_last(weight), 2, 1)
            results[threads] = (out, *event_kernels.conv_backward(events, channels_last(weight),
                                                                  grad, 2, 1))
    finally:
        torch.set_num_threads(previous)
    expected, grad_weight, grad_input = dense_gradients(x, weight, grad, 2, 1)
    for threads, (out, weight_cl, input_at_events) in results.items():
        torch.testing.assert_close(out, expected, **TOLERANCE[dtype])
        torch.testing.assert_close(weight_cl.permute(3, 0, 1, 2), grad_weight, **TOLERANCE[dtype])
        torch.testing.assert_close(input_at_events[x != 0], grad_input[x != 0],
                                   **TOLERANCE[dtype])
