"""Every fused kernel gives the bits of the neurons' own methods: each kernel of the ``cpu`` and
``triton`` tables against the same kernel of the ``torch`` table (which runs the neurons'
methods step by step), then whole networks.

The cpu kernels get shapes with several blocks of 1024 neurons, ragged ends and two threads;
the Triton kernels run in Triton's CPU interpreter here (slow: tiny shapes, a few steps).
"""
import pytest
import torch
import torch.nn.functional as F
from test_parity import build, fix_dropout_masks, input_spikes, mse_sum

from examples.custom_neuron import SoftResetLIF
from examples.plif_neuron import PLIFNeuron
from test_backends import SurrogateLIF

from spiking import IFNeuron, LIFNeuron, OutputIntegrator, backends
from spiking.backends import cpu, cpu_kernels, pytorch, reference, triton_kernels

CPU = torch.device("cpu")
FUSED = [pytest.param(name, marks=pytest.mark.skipif(
    backends.unavailable(name, CPU) is not None,
    reason=f"backend {name} cannot run here: {backends.unavailable(name, CPU)}"))
    for name in ("cpu", "triton")]
DTYPES = [torch.float32, torch.float64]
# [T, B, ...] of the scans: blocks of 1024 with a ragged end, and work for two threads
SCAN_SHAPES = {"cpu": [(3, 5, 3, 20, 70), (4, 1, 3, 97, 101)], "triton": [(4, 2, 3, 2, 3)]}
# (T, B, C, H, W) and k of the pooling neuron: some rows and columns dropped
POOL_SHAPES = {"cpu": [((3, 4, 20, 24, 24), 2), ((2, 3, 5, 13, 11), 2), ((2, 1, 4, 9, 10), 3)],
               "triton": [((3, 2, 2, 6, 4), 2), ((3, 2, 2, 7, 5), 2), ((2, 2, 2, 8, 7), 3)]}


@pytest.fixture
def two_threads():
    """The cpu kernels split their larger shapes over two threads (conftest restores one)."""
    torch.set_num_threads(2)


def assert_identical(fused, loops):
    for a, b in zip(fused, loops, strict=True):
        if b is None:
            assert a is None
            continue
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b), (a - b).abs().max()


def both(name, run):
    """``run(table)`` with the fused table ``name``, then with the torch table."""
    return run(backends.table(name)), run(pytorch)


def currents(shape, dtype, threshold, generator):
    """Random currents, some exactly at the threshold from rest (the strict ``>``)."""
    values = torch.rand(shape, generator=generator, dtype=dtype) * 1.6 * threshold
    values[0].view(-1)[::7] = threshold
    return values


def neuron_of(kind):
    """The paper's neurons, and researchers' neurons whose scans are generated the same way:
    another reset, a derivative that reads the potential, a learnable per-channel leak."""
    neurons = {"lif": lambda: LIFNeuron(1.0, 0.97), "if": lambda: IFNeuron(0.75),
               "soft-reset": lambda: SoftResetLIF(1.0, 0.97),
               "surrogate": lambda: SurrogateLIF(1.0, 0.97),
               "plif": lambda: PLIFNeuron(1.0, 0.97, channels=3)}
    neuron = neurons[kind]()
    if kind == "plif":
        with torch.no_grad():
            neuron.leak_logit.add_(torch.tensor([0.0, -1.0, 0.5])[:, None, None])
    return neuron


def forward_and_backward(table, neuron, current, start, grad, carry):
    """Spikes, final membrane, statistics, what was kept, the currents' gradient and the
    neuron's parameters' gradients of one chunk run by ``table``."""
    out, membrane = current.clone(), start.clone()
    stats = neuron.spike_stats(membrane)
    membrane, saved = table.neuron_forward(neuron, out, membrane, stats, out, True)
    scale = neuron.spike_scale(stats)
    grad_current, parameter_grads = table.neuron_backward(neuron, saved, grad, scale, carry)
    return (out, membrane, saved.kept, *stats, grad_current), parameter_grads


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["lif", "if", "soft-reset", "surrogate", "plif"])
@pytest.mark.usefixtures("two_threads")
def test_generated_scans_give_the_bits_of_the_neurons_methods(name, dtype, kind):
    # Forward (spikes, membrane, statistics, what is kept) and the currents' gradient bit for
    # bit; a learnable leak's gradient, summed over the neurons in another order, to rounding
    # (float32 sums of 10^5 terms that cancel: 1e-3).
    gen = torch.Generator().manual_seed(0)
    neuron = neuron_of(kind).to(dtype)
    for shape in SCAN_SHAPES[name]:
        current = currents(shape, dtype, neuron.threshold, gen)
        start = torch.rand(shape[1:], generator=gen, dtype=dtype) * 0.5
        start.view(-1)[::7] = 0.0
        grad = torch.randn(shape, generator=gen, dtype=dtype)
        carry = torch.randn(shape[1:], generator=gen, dtype=dtype)
        fused, loops = both(name, lambda table: forward_and_backward(
            table, neuron, current, start, grad, carry))
        assert_identical(fused[0], loops[0])
        spikes = fused[0][0]
        assert 0 < spikes.sum() < spikes.numel()
        assert not spikes[0].view(-1)[::7].any()
        if kind == "plif":
            (fast,), (stepped,) = fused[1], loops[1]
            assert fast.shape == (3, 1, 1) and stepped.abs().min() > 0
            torch.testing.assert_close(fast, stepped, rtol=1e-9 if dtype == torch.float64
                                       else 1e-3, atol=0)
        else:
            assert fused[1] == loops[1] == ()


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("inplace", [False, True])
def test_neuron_scan_writes_where_asked(name, inplace):
    current = torch.rand(4, 3, 50, dtype=torch.float64)

    def run(table):
        x = current.clone()
        out = x if inplace else torch.empty_like(x)
        membrane, saved = table.neuron_forward(IFNeuron(0.6), x, torch.zeros(3, 50, dtype=x.dtype),
                                               (), out, False)
        assert saved is None and (inplace or torch.equal(x, current))
        return out, membrane

    assert_identical(*both(name, run))


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.usefixtures("two_threads")
def test_the_average_pool_and_its_gradient_as_pytorch(name, dtype):
    # Any values, not only spikes: the same sums in the same order as F.avg_pool2d; the
    # gradient spread over the windows, the rows and columns the pool dropped zero.
    gen = torch.Generator().manual_seed(5)
    for shape, k in POOL_SHAPES[name]:
        x = torch.randn(shape, generator=gen, dtype=dtype)
        pooled_shape = (*shape[:-2], shape[-2] // k, shape[-1] // k)
        grad = torch.randn(pooled_shape, generator=gen, dtype=dtype)
        fused, loops = both(name, lambda table: (
            table.average_pool(x, k), table.average_pool_backward(grad, k, shape[-2:])))
        assert_identical(fused, loops)
        assert fused[0].shape == pooled_shape
        assert (fused[1][..., shape[-2] // k * k:, :] == 0).all()


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("dtype", DTYPES)
def test_output_integrator(name, dtype):
    current = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(3), dtype=dtype)
    start = torch.randn(3, 4, generator=torch.Generator().manual_seed(4), dtype=dtype)
    fused, loops = both(name, lambda table: (
        table.integrator_forward(OutputIntegrator(0.95), current, start.clone()),))
    assert_identical(fused, loops)


PACKING = ["spikes", "dropout-scaled", "signed", "all-zero", "two-values", "nan", "inf",
           "negative-zero"]


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", PACKING)
def test_spike_packing(name, dtype, case):
    gen = torch.Generator().manual_seed(2)
    shape = (6, 3, 9000) if name == "cpu" else (3, 2, 7)
    base = (torch.rand(shape, generator=gen) < 0.5).to(dtype)
    x = {"spikes": base, "dropout-scaled": base / (1 - 0.25),
         "signed": base - (torch.rand(shape, generator=gen) < 0.3).to(dtype),
         "all-zero": torch.zeros(shape, dtype=dtype),
         "two-values": base * torch.where(torch.rand(shape, generator=gen) < 0.5, 1.0, 2.0),
         "nan": base.index_put((torch.tensor([1]),), torch.tensor(float("nan"), dtype=dtype)),
         "inf": base * float("inf"), "negative-zero": -torch.zeros(shape, dtype=dtype)}[case]
    x = x.to(dtype)
    pack = cpu_kernels.pack_spikes if name == "cpu" else triton_kernels.pack_spikes
    fused, loops = pack(x), pytorch.pack_spikes(x)
    packable = case not in ("two-values", "nan", "inf")
    # the CPU decides on the host, and keeps what it cannot pack; the device-side packings
    # keep codes whose scale, NaN there, spoils every gradient made from them
    assert torch.isfinite(loops[1]).item() == packable
    assert loops[0].dtype == torch.int8 and loops[1].dtype == dtype
    if packable:
        assert fused[0].dtype == torch.int8 and torch.equal(fused[0], loops[0])
        assert fused[1].dtype == dtype and fused[1].item() == loops[1].item()
        assert torch.equal(pytorch.unpack_spikes(fused, dtype), x)
        assert torch.equal(pytorch.unpack_spikes(loops, dtype), x)
    elif name == "cpu":
        assert fused[0] is x and fused[1] is None
    else:
        assert torch.isnan(fused[1]).item()
    if not packable:
        assert torch.isnan(pytorch.unpack_spikes(loops, dtype)).all()


def test_an_undeclared_input_is_kept_as_it_is():
    x = torch.rand(2, 3)
    assert pytorch.pack_spikes(x, spike_train=False) == (x, None)
    assert triton_kernels.pack_spikes(x, spike_train=False) == (x, None)


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.usefixtures("two_threads")
def test_poisson_encoding(name, dtype):
    # The same draws give the same spikes to the bit, -0 where a negative pixel did not fire.
    shape, steps = ((32, 1, 28, 28), 8) if name == "cpu" else ((2, 3, 5, 5), 3)
    images = torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=dtype)
    images[0, 0, 0, :3] = 0
    fused, loops = both(name, lambda table: (
        table.poisson_encode(images, steps, 0.7, torch.Generator().manual_seed(8)),))
    assert_identical(fused, loops)
    assert torch.equal(fused[0].signbit(), loops[0].signbit())
    assert fused[0].signbit().any() and (fused[0] == 0).any() and (fused[0] == -1).any()


def train_step(model, spikes, name, masks_from=None):
    """Output and every weight gradient of one forward and backward with backend ``name``."""
    model.zero_grad()
    with backends.use_backend(name):
        out = model(spikes)
        mse_sum(out, spikes.shape[1]).backward()
    return [out.detach()] + [p.grad.clone() for _, p in sorted(model.named_parameters())]


@pytest.mark.parametrize("arch", ["lenet", "vgg9", "resnet11", "resnet13"])
@pytest.mark.skipif(backends.unavailable("cpu", CPU) is not None, reason="no C kernels")
def test_networks_train_identically_with_the_c_kernels(arch, monkeypatch):
    # float32, as the networks train: same outputs and weight gradients, bit for bit. The
    # event-driven synapses sum in another order (tests/test_event_kernels.py): off here.
    monkeypatch.setattr(cpu, "EVENT_DENSITY_MAX", 0.0)
    model, gen = build(arch, seed=3)
    model = model.float()
    model.time_chunk = 2
    spikes = input_spikes(arch, gen).float()
    results = []
    for name in ("cpu", "torch"):
        torch.manual_seed(4)  # the same dropout masks
        results.append(train_step(model, spikes, name))
    assert results[0][0].abs().sum() > 0 and all(g.abs().sum() > 0 for g in results[0][1:])
    assert_identical(*results)


@pytest.mark.parametrize("arch", ["lenet", "resnet11"])
@pytest.mark.skipif(backends.unavailable("triton", CPU) is not None, reason="no triton")
def test_networks_train_identically_with_the_triton_kernels(arch):
    """Pooling and residual layers, dropout masks held over time, float64: output and every
    weight gradient identical, in one chunk of all T and in uneven chunks (chunks change the
    matrix products' shapes, and so their rounding: compared chunk for chunk)."""
    for chunk in (3, 2):
        results = []
        for name in ("triton", "torch"):
            model, gen = build(arch, seed=3)
            model.time_chunk = chunk
            spikes = input_spikes(arch, gen, time_steps=3, batch=2)
            fix_dropout_masks(model, gen)
            results.append(train_step(model, spikes, name))
        assert results[1][0].abs().max() > 0 and all(g.abs().max() > 0 for g in results[1][1:])
        assert_identical(*results)


def test_the_pooling_neurons_gradient_is_the_average_pools():
    # The neuron-generic pooling backward (reference and torch) against autograd through
    # F.avg_pool2d.
    spikes = (torch.rand(2, 3, 2, 7, 6, generator=torch.Generator().manual_seed(9)) < 0.5)
    grad = torch.randn(2, 3, 2, 3, 3, dtype=torch.float64)
    image = spikes.double().requires_grad_()
    F.avg_pool2d(image.flatten(0, 1), 2).unflatten(0, (2, 3)).backward(grad)
    assert torch.equal(reference.average_pool_backward(grad, 2, (7, 6)), image.grad)
