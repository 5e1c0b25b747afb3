"""The Triton kernels (spiking/triton_kernels.py) give the bits of the PyTorch loops.

They run here in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, set below before
triton is first used; slow, so tiny shapes and a few steps), each against the ``torch`` backend:
the scans with their chunk carries, the pooling neuron's pool and upsampling, the output
integrator and the spike packing, then whole networks' outputs and weight gradients in float64,
and the launch count of a training step, which must not grow with T. Skipped where triton is not
installed.
"""
import os

import pytest
import torch

from spiking import backend, triton_kernels

# Before the kernels are first imported, and for as long as they run: triton reads it then.
os.environ.setdefault("TRITON_INTERPRET", "1")

from benchmarks.count_launches import count_training_step  # noqa: E402
from spiking import functional as SF  # noqa: E402
from spiking.functional import NeuronState  # noqa: E402
from spiking.synapses import compact_spikes  # noqa: E402
from test_parity import build, fix_dropout_masks, input_spikes, mse_sum  # noqa: E402

pytestmark = pytest.mark.skipif(
    triton_kernels.unavailable_reason(torch.device("cpu")) is not None,
    reason=f"{triton_kernels.unavailable_reason(torch.device('cpu'))}")

DTYPES = [torch.float64, torch.float32]


@pytest.fixture
def launches(monkeypatch):
    """The names of the Triton kernels launched during the test."""
    names = []
    original = triton_kernels._launch

    def counted(kernel, *args, **kwargs):
        names.append(kernel.fn.__name__)
        return original(kernel, *args, **kwargs)

    monkeypatch.setattr(triton_kernels, "_launch", counted)
    return names


def both(run):
    """``run()`` under the torch backend and under the triton backend, from the same seed."""
    results = []
    for name in ("torch", "triton"):
        torch.manual_seed(0)
        with backend.use_backend(name):
            results.append(run())
    return results


def assert_equal(reference, fused):
    for expected, actual in zip(reference, fused, strict=True):
        if expected is None:
            assert actual is None
            continue
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        assert torch.equal(actual, expected), (actual - expected).abs().max()


def currents(shape, dtype, threshold):
    """Random currents with some exactly at the threshold, from rest: the strict ``>``."""
    values = torch.rand(shape, dtype=dtype) * 2 * threshold - 0.3
    values[0].view(-1)[::3] = threshold
    return values


def test_the_backend_is_chosen_by_name_only_on_cpu_tensors():
    with backend.use_backend("auto"):
        assert backend.backend_for("cpu") != "triton"
    with backend.use_backend("triton"):
        assert backend.backend_for("cpu") == "triton"
        assert triton_kernels.usable(torch.zeros(2, 3), torch.zeros(3))
        assert not triton_kernels.usable(torch.zeros(2, 3).t())
        assert not triton_kernels.usable(torch.zeros(3, dtype=torch.float16))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("leak", [0.95, 1.0])
@pytest.mark.parametrize("extras", [True, False], ids=["spikes-and-sums", "plain"])
def test_lif_scan_matches_the_loop(dtype, leak, extras, launches):
    threshold = 0.75
    current = currents((4, 2, 3, 5), dtype, threshold)

    def run():
        membrane = torch.rand(current.shape[1:], dtype=dtype) * 0.5
        spikes = torch.empty(current.shape, dtype=torch.bool) if extras else None
        sums = (torch.rand_like(membrane), torch.rand_like(membrane)) if extras else None
        out = SF.lif_scan(current.clone(), threshold, leak, membrane=membrane,
                          spikes_out=spikes, spike_sums=sums)
        return out, membrane, spikes, *(sums or (None, None))

    reference, fused = both(run)
    assert_equal(reference, fused)
    assert launches == ["lif_scan"]
    assert 0 < reference[0].sum() < reference[0].numel()


@pytest.mark.parametrize("dtype", DTYPES)
def test_lif_scan_in_chunks_carries_membrane_and_sums(dtype):
    current = currents((5, 3, 7), dtype, 1.0)
    whole = torch.zeros(3, 7, dtype=dtype)
    whole_sums = (torch.zeros_like(whole), torch.zeros_like(whole))
    with backend.use_backend("torch"):
        expected = SF.lif_scan(current, 1.0, 0.9, membrane=whole, spike_sums=whole_sums)
    membrane = torch.zeros(3, 7, dtype=dtype)
    sums = (torch.zeros_like(membrane), torch.zeros_like(membrane))
    with backend.use_backend("triton"):
        chunks = [SF.lif_scan(part.clone(), 1.0, 0.9, membrane=membrane, spike_sums=sums)
                  for part in current.split([2, 1, 2])]
    assert_equal([expected, whole, *whole_sums], [torch.cat(chunks), membrane, *sums])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", ["per-neuron", "number", "none"])
@pytest.mark.parametrize("with_carry", [True, False], ids=["carry", "from-zero"])
def test_gradient_scan_matches_the_loop(dtype, scale, with_carry, launches):
    grad = torch.randn(5, 2, 9, dtype=dtype)
    spikes = torch.rand(5, 2, 9) < 0.4
    factor = {"per-neuron": torch.rand(2, 9, dtype=dtype), "number": 0.3, "none": None}[scale]
    carry = torch.randn(2, 9, dtype=dtype) if with_carry else None

    reference, fused = both(lambda: [SF.spike_gradient_scan(grad, spikes, factor, carry)])
    assert_equal(reference, fused)
    assert launches == ["gradient_scan"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_scan_in_chunks_carries_delta(dtype):
    grad = torch.randn(5, 11, dtype=dtype)
    spikes = torch.rand(5, 11) < 0.3
    scale = torch.rand(11, dtype=dtype)
    with backend.use_backend("torch"):
        expected = SF.spike_gradient_scan(grad, spikes, scale)
    with backend.use_backend("triton"):
        late = SF.spike_gradient_scan(grad[3:], spikes[3:], scale)
        early = SF.spike_gradient_scan(grad[:3], spikes[:3], scale, carry=late[0].clone())
    assert_equal([expected], [torch.cat([early, late])])


POOL_SHAPES = [(2, 6, 4), (2, 7, 5), (3, 8, 7)]  # kernel, height, width: some rows dropped


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel_size, height, width", POOL_SHAPES)
def test_average_pool_matches_pytorch(dtype, kernel_size, height, width, launches):
    spikes = torch.rand(3, 2, 3, height, width, dtype=dtype)
    reference, fused = both(lambda: [SF._average_pool(spikes, kernel_size)])
    assert_equal(reference, fused)
    assert launches == ["avg_pool"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel_size, height, width", POOL_SHAPES)
def test_pooling_neuron_forward_and_backward_in_chunks(dtype, kernel_size, height, width,
                                                       launches):
    spikes = (torch.rand(4, 2, 2, height, width) < 0.6).to(dtype)
    grad_out = torch.randn(4, 2, 2, height // kernel_size, width // kernel_size, dtype=dtype)

    def run():
        x = spikes.clone().requires_grad_()
        state = NeuronState()
        out = torch.cat([SF.pooling_neuron(part, 0.5, kernel_size, state)
                         for part in x.split([3, 1])])
        out.backward(grad_out)
        with torch.no_grad():
            evaluated = SF.pooling_neuron(spikes, 0.5, kernel_size)
        return out, state.membrane, x.grad, evaluated

    reference, fused = both(run)
    assert_equal(reference, fused)
    assert reference[0].any() and reference[2].any()
    assert launches == ["pooling_scan", "pooling_scan", "pooling_gradient_scan",
                        "pooling_gradient_scan", "avg_pool", "lif_scan"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_lif_neuron_forward_and_backward_in_chunks(dtype):
    current = currents((5, 2, 6), dtype, 1.25)
    grad_out = torch.randn(5, 2, 6, dtype=dtype)

    def run():
        x = current.clone().requires_grad_()
        state = NeuronState()
        out = torch.cat([SF.lif_neuron(part.clone(), 1.25, 0.95, state=state)
                         for part in x.split([2, 3])])
        out.backward(grad_out)
        return out, state.membrane, state.sums.trace, state.sums.count, x.grad

    reference, fused = both(run)
    assert_equal(reference, fused)


@pytest.mark.parametrize("dtype", DTYPES)
def test_output_integrator_matches_the_loop(dtype, launches):
    current = torch.randn(5, 3, 4, dtype=dtype)

    def run():
        x = current.clone().requires_grad_()
        out = SF.output_integrator(x, 0.95, 1.25)
        out.backward(torch.ones_like(out))
        return out, x.grad

    reference, fused = both(run)
    assert_equal(reference, fused)
    assert launches == ["output_integrator"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["spikes", "dropout-scaled", "signed", "all-zero", "two-values",
                                  "nan", "inf", "negative-zero"])
def test_spike_packing_matches_pytorch(dtype, case):
    base = (torch.rand(3, 2, 7) < 0.5).to(dtype)
    x = {"spikes": base, "dropout-scaled": base / (1 - 0.25),
         "signed": base - (torch.rand(3, 2, 7) < 0.3).to(dtype),
         "all-zero": torch.zeros(3, 2, 7, dtype=dtype),
         "two-values": base * torch.where(torch.rand(3, 2, 7) < 0.5, 1.0, 2.0).to(dtype),
         "nan": base.index_put((torch.tensor([1]),), torch.tensor(float("nan"), dtype=dtype)),
         "inf": base * float("inf"), "negative-zero": -torch.zeros(3, 2, 7, dtype=dtype)}[case]

    reference, fused = both(lambda: compact_spikes(x))
    packable = case not in ("two-values", "nan", "inf")
    assert (fused[1] is not None) == packable == (reference[1] is not None)
    if packable:
        assert torch.equal(fused[0], reference[0]) and fused[0].dtype == torch.int8
        assert fused[1].dtype == dtype and fused[1].device == x.device
        assert fused[1].item() == reference[1].item()
    else:
        assert fused[0] is x


@pytest.mark.parametrize("arch", ["lenet", "resnet11"])
def test_a_network_through_triton_equals_the_torch_backend_in_float64(arch, launches):
    """LeNet and ResNet11 (pooling and residual layers, dropout masks held over time): output
    and every weight gradient identical; one chunk of all T and uneven chunks."""
    results = {}
    for name, chunk in (("torch", 3), ("triton", 3), ("torch", 2), ("triton", 2)):
        model, gen = build(arch, seed=3)
        model.time_chunk = chunk
        spikes = input_spikes(arch, gen, time_steps=3, batch=2)
        fix_dropout_masks(model, gen)
        with backend.use_backend(name):
            out = model(spikes)
            mse_sum(out, spikes.shape[1]).backward()
        results[name, chunk] = [out, *(p.grad for _, p in sorted(model.named_parameters()))]
    for chunk in (3, 2):  # chunks change the matrix products' shapes, and so their rounding
        reference = results["torch", chunk]
        assert reference[0].abs().max() > 0
        assert all(grad.abs().max() > 0 for grad in reference[1:])
        assert_equal(reference, results["triton", chunk])
    assert {"lif_scan", "gradient_scan", "output_integrator", "pack_spikes"} <= set(launches)


def test_the_training_step_launches_as_many_kernels_at_any_t():
    """All T in one chunk: the triton backend's operations and launches do not depend on T
    (the PyTorch loops' grow with it)."""
    counts = {(name, t): count_training_step("lenet", t, 2, 0.1, name).total
              for name in ("torch", "triton") for t in (3, 5)}
    assert counts["triton", 3] == counts["triton", 5]
    assert counts["torch", 5] > counts["torch", 3]
    assert counts["triton", 5] < counts["torch", 5]
