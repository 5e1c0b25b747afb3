"""The fused CPU kernels give the PyTorch loops' bits: neuron scans, spike packing, pooling,
Poisson encoding, whole models.

Each comparison runs the same call with the ``cpu`` backend and with the ``torch`` backend
(``spiking.backend.use_backend``).
"""
import warnings

import pytest
import torch
from test_parity import build, input_spikes

from spiking import backend, cpu_kernels
from spiking import functional as SF
from spiking.synapses import compact_spikes, expand_spikes

pytestmark = pytest.mark.skipif(not cpu_kernels.available(),
                                reason="no C compiler: the fused CPU kernels cannot be built")

DTYPES = [torch.float32, torch.float64]


def kernels(enabled: bool):
    return backend.use_backend("cpu" if enabled else "torch")


def both(fn):
    """``fn()`` with the fused kernels, then with the PyTorch loops."""
    with kernels(True):
        fused = fn()
    with kernels(False):
        loops = fn()
    return fused, loops


def assert_identical(fused, loops):
    for a, b in zip(fused, loops, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)


# 3 steps of 5 x 7001 neurons: several blocks of 1024 and a ragged end; 4 x 40000 neuron-steps
# go to two threads.
SHAPES = [(3, 5, 7001), (4, 40000)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_lif_scan_with_membrane_and_spike_sums(dtype, shape):
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    current = torch.rand(shape, generator=gen, dtype=dtype) * 0.8
    start = torch.rand(shape[1:], generator=gen, dtype=dtype) * 0.5
    start[..., ::7], current[0, ..., ::7] = 0.0, 1.0  # u exactly at the threshold: no spike

    def run():
        membrane, trace, count = start.clone(), torch.zeros_like(start), torch.zeros_like(start)
        spikes = torch.empty(shape, dtype=torch.bool)
        out = SF.lif_scan(current, 1.0, 0.97, membrane=membrane, spikes_out=spikes,
                          spike_sums=(trace, count))
        return out, spikes, membrane, trace, count

    fused, loops = both(run)
    assert_identical(fused, loops)
    assert 0 < fused[1].sum() < fused[1].numel() and torch.equal(fused[1], fused[0].bool())
    assert not fused[1][0, ..., ::7].any()


@pytest.mark.parametrize("inplace", [False, True])
def test_lif_scan_writes_where_asked(inplace):
    current = torch.rand(4, 3, 50, dtype=torch.float64)

    def run():
        x = current.clone()
        out = SF.lif_scan(x, 0.6, 1.0, out=x if inplace else None)
        assert (out.data_ptr() == x.data_ptr()) == inplace
        assert inplace or torch.equal(x, current)
        return (out,)

    assert_identical(*both(run))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", ["neurons", "number", "none"])
def test_gradient_scan(dtype, shape, scale):
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(1)
    grad = torch.randn(shape, generator=gen, dtype=dtype)
    spikes = torch.rand(shape, generator=gen) < 0.3
    carry = torch.randn(shape[1:], generator=gen, dtype=dtype)
    factor = {"neurons": torch.rand(shape[1:], generator=gen, dtype=dtype) + 0.5,
              "number": 0.25, "none": None}[scale]
    fused, loops = both(lambda: (SF.spike_gradient_scan(grad, spikes, factor, carry),
                                 SF.spike_gradient_scan(grad, spikes, factor)))
    assert_identical(fused, loops)
    silent = ~spikes.any(0)
    assert torch.equal(fused[0][:, silent], carry[silent].expand(shape[0], -1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("values", "packs"), [
    ((-1.0, 1.0), True), ((1.25,), True), ((-0.5,), True), ((), True),
    ((0.5, 1.0), False), ((1.0, -2.0), False), ((1.0, float("nan")), False),
    ((float("inf"),), False)])
def test_pack_spikes(dtype, values, packs):
    gen = torch.Generator().manual_seed(2)
    x = torch.zeros(6, 3, 9000, dtype=dtype)
    for value in values:
        x[torch.rand(x.shape, generator=gen) < 0.1] = value
    fused, loops = both(lambda: compact_spikes(x))
    if packs:
        assert fused[0].dtype == torch.int8 and torch.equal(fused[0], loops[0])
        assert torch.equal(fused[1], loops[1]) and fused[1].dtype == dtype
        assert torch.equal(expand_spikes(*fused, dtype), x)
    else:
        assert fused[1] is None and loops[1] is None and fused[0] is x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "kernel_size"), [((3, 4, 20, 24, 24), 2), ((2, 3, 5, 13, 11), 2),
                                                    ((2, 1, 4, 9, 10), 3)])
def test_average_pool_equals_torch(dtype, shape, kernel_size):
    # Any values, not only spikes: the same sums in the same order as F.avg_pool2d.
    torch.set_num_threads(2)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
    fused = cpu_kernels.avg_pool(x, kernel_size)
    expected = torch.nn.functional.avg_pool2d(x.flatten(0, 1), kernel_size)
    assert torch.equal(fused, expected.unflatten(0, shape[:2]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "kernel_size"), [((3, 4, 20, 24, 24), 2), ((2, 3, 5, 13, 11), 2),
                                                    ((2, 1, 4, 9, 10), 3)])
def test_pooling_neuron_gradient_equals_torch(dtype, shape, kernel_size):
    # The backward's upsampling to the input's size, odd sizes zero-padded.
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(6)
    spikes = (torch.rand(shape, generator=gen) < 0.4).to(dtype)
    pooled_shape = (*shape[:-2], shape[-2] // kernel_size, shape[-1] // kernel_size)
    grad = torch.randn(pooled_shape, generator=gen, dtype=dtype)

    def run():
        leaf = spikes.clone().requires_grad_()
        out = SF.pooling_neuron(leaf, 0.6, kernel_size)
        out.backward(grad)
        return out.detach(), leaf.grad

    fused, loops = both(run)
    assert_identical(fused, loops)
    assert fused[1].abs().sum() > 0 and (fused[1][..., shape[-2] // kernel_size * kernel_size:, :]
                                         == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("time_steps", "shape"), [(7, (5, 3, 9, 9)), (8, (32, 1, 28, 28))])
def test_poisson_encoding_equals_torch(dtype, time_steps, shape):
    # The same draws give the same spikes to the bit, -0 where a negative pixel did not fire;
    # 8 x 25088 neuron-steps go to two threads.
    torch.set_num_threads(2)
    images = torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=dtype)
    images[0, 0, 0, :3] = 0

    def run():
        return (SF.poisson_encode(images, time_steps, 0.7, torch.Generator().manual_seed(8)),)

    fused, loops = both(run)
    assert_identical(fused, loops)
    assert torch.equal(fused[0].signbit(), loops[0].signbit())
    assert fused[0].signbit().any() and (fused[0] == 0).any() and (fused[0] == -1).any()


def test_layouts_and_dtypes_the_kernels_do_not_take_use_the_loops():
    x = torch.rand(4, 6, 5, dtype=torch.float64)
    assert cpu_kernels.usable(x, x[0])
    assert not cpu_kernels.usable(x.transpose(1, 2))
    assert not cpu_kernels.usable(x.half())
    assert not cpu_kernels.usable(x, x[0].float())  # two float dtypes
    spikes = SF.lif_scan(x.transpose(1, 2), 0.5, 0.9)
    with kernels(False):
        assert torch.equal(spikes, SF.lif_scan(x.transpose(1, 2).contiguous(), 0.5, 0.9))


def test_arguments_that_would_overrun_a_buffer_are_refused():
    current = torch.rand(3, 4, 5)
    with pytest.raises(ValueError, match="membrane has shape"):
        SF.lif_scan(current, 0.5, 0.9, membrane=torch.zeros(4, 6))
    with pytest.raises(ValueError, match="spikes has dtype"):
        SF.spike_gradient_scan(current, (current > 0.5).float(), None, torch.zeros(4, 5))
    with pytest.raises(ValueError, match="carry has shape"):
        SF.spike_gradient_scan(current, current > 0.5, None, torch.zeros(5))


def test_without_a_compiler_the_loops_run_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("SPIKING_KERNEL_CACHE", str(tmp_path / "cache"))
    cpu_kernels._library.cache_clear()
    monkeypatch.setattr(backend, "_warned", set())
    try:
        assert not cpu_kernels.available()
        assert "no-such-compiler" in cpu_kernels.build_error()
        current = torch.rand(3, 4, dtype=torch.float64)
        with pytest.warns(RuntimeWarning, match="backend 'cpu' cannot run here .*could not be "
                                                "built.*no-such-compiler"):
            spikes = SF.lif_scan(current, 0.5, 0.9)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once, not at every call
            assert torch.equal(spikes, SF.lif_scan(current, 0.5, 0.9))
        assert not list((tmp_path / "cache").glob("*.so"))
    finally:
        monkeypatch.undo()
        cpu_kernels._library.cache_clear()
    assert cpu_kernels.available()
    assert torch.equal(spikes, SF.lif_scan(current, 0.5, 0.9))


def test_a_compiler_without_openmp_builds_single_threaded_kernels(monkeypatch, tmp_path):
    compiler = tmp_path / "cc-without-openmp"
    compiler.write_text('#!/bin/sh\ncase " $* " in *" -fopenmp "*) exit 1;; esac\nexec cc "$@"\n')
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    monkeypatch.setenv("SPIKING_KERNEL_CACHE", str(tmp_path / "cache"))
    cpu_kernels._library.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert cpu_kernels.available()
        assert len(list((tmp_path / "cache").glob("*.so"))) == 1
        torch.set_num_threads(2)
        shape = SHAPES[1]
        current = torch.rand(shape, dtype=torch.float64)
        fused, loops = both(lambda: (SF.lif_scan(current, 0.7, 0.9),))
        assert_identical(fused, loops)
    finally:
        monkeypatch.undo()
        cpu_kernels._library.cache_clear()


@pytest.mark.parametrize("arch", ["lenet", "vgg9", "resnet11", "resnet13"])
def test_models_train_identically_with_and_without_the_kernels(arch, monkeypatch):
    # float32, as the networks train: same outputs and weight gradients, bit for bit. The
    # event-driven synapses sum in another order (tests/test_event_kernels.py): off here.
    monkeypatch.setattr(backend, "EVENT_DENSITY_MAX", 0.0)
    model, gen = build(arch, seed=3)
    model = model.float()
    model.time_chunk = 2
    spikes = input_spikes(arch, gen).float()

    def step():
        torch.manual_seed(4)  # the same dropout masks
        model.zero_grad()
        out = model(spikes)
        out.square().sum().backward()
        return [out.detach()] + [p.grad.clone() for p in model.parameters()]

    fused, loops = both(step)
    assert fused[0].abs().sum() > 0 and all(g.abs().sum() > 0 for g in fused[1:])
    assert_identical(fused, loops)
