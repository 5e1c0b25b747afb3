"""The backend choice (spiking/backends/__init__.py): one setting, tables of the same kernels, a
neuron no fused kernel implements runs on torch, and a fallback is never silent."""
import importlib
import logging
import types

import pytest
import torch

import models
import spiking.backends as backends
from spiking import LIFNeuron, functional
from spiking.backends import cpu, cpu_kernels, pytorch, reference, triton_kernels
from spiking.backends.contract import KERNELS, KernelTable, check_table

CPU = torch.device("cpu")


class SoftResetLIF(LIFNeuron):
    """A subclass inherits the equations, not the fused kernel: it may change them."""

    def reset(self, potential, spikes):
        return self.leak * (potential - self.threshold * spikes)


class SurrogateLIF(LIFNeuron):
    """A derivative that needs the membrane potential (a fast-sigmoid surrogate)."""

    keeps_potential = True

    def backward_step(self, grad_spikes, grad_membrane, potential, scale):
        surrogate = 1.0 / (1.0 + 10.0 * (potential - self.threshold).abs()) ** 2
        return surrogate * grad_spikes + torch.where(potential > self.threshold, 0.0,
                                                     grad_membrane)


@pytest.fixture
def log(caplog):
    backends._told.clear()
    caplog.set_level(logging.WARNING, logger="spiking")
    return caplog


def test_every_backend_offers_every_kernel():
    for name in backends.NAMES:
        table = backends.table(name)
        assert table.NAME == name
        missing = [kernel for kernel in backends.KERNELS if not callable(getattr(table, kernel))]
        assert not missing, f"backend {name} lacks {missing}"
        assert isinstance(table.STEP_BY_STEP, bool)


@pytest.mark.parametrize("module", [reference, pytorch, cpu, triton_kernels],
                         ids=lambda m: m.NAME)
def test_every_backend_module_is_a_kernel_table(module):
    assert isinstance(module, KernelTable)
    assert check_table(module) is module
    assert {"neuron_forward", "conv_backward", "poisson_encode", "unavailable"} <= set(KERNELS)


def copy_without(module: types.ModuleType, name: str) -> types.ModuleType:
    """A module holding all of ``module``'s names but ``name``."""
    copy = types.ModuleType(f"{module.__name__}_without_{name}")
    copy.__dict__.update({k: v for k, v in vars(module).items()
                          if k != name and not k.startswith("__")})
    return copy


@pytest.mark.parametrize("name", ["average_pool_backward", "neuron_refusal", "STEP_BY_STEP"])
def test_a_module_missing_a_kernel_is_refused(name):
    broken = copy_without(cpu, name)
    assert not isinstance(broken, KernelTable)
    with pytest.raises(TypeError, match=f"lacks {name}$"):
        check_table(broken)


def test_a_kernel_that_is_not_a_function_is_refused():
    broken = copy_without(pytorch, "conv_forward")
    broken.conv_forward = "not a function"
    assert isinstance(broken, KernelTable)  # the protocol checks names only
    with pytest.raises(TypeError, match="lacks conv_forward$"):
        check_table(broken)


def test_auto_takes_the_cpu_kernels_for_cpu_tensors_and_torch_elsewhere():
    x = torch.zeros(2, 3)
    with backends.use_backend("auto"):
        expected = cpu if cpu_kernels.available() else pytorch
        assert backends.select(x) is expected
        assert backends.select(torch.zeros(2, 3, device="meta")) is pytorch
        assert backends.describe("cpu").startswith(f"spiking backend {expected.NAME}: ")


def test_auto_keeps_the_pytorch_loops_on_cuda_until_triton_is_validated_on_a_gpu():
    with backends.use_backend("auto"):
        assert backends.describe("cuda").startswith("spiking backend torch: ")


def test_use_backend_chooses_and_restores():
    before = backends.requested_backend()
    with backends.use_backend("torch"):
        assert backends.requested_backend() == "torch"
        assert backends.select(torch.zeros(3)) is pytorch
    assert backends.requested_backend() == before


def test_an_unknown_backend_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown spiking backend 'fast'; choose auto or one of "
                                         "reference, torch, cpu, triton"):
        backends.set_backend("fast")


def test_the_environment_variable_chooses_at_import(monkeypatch):
    monkeypatch.setenv("SPIKING_BACKEND", "Torch")
    fresh = importlib.reload(backends)
    try:
        assert fresh.requested_backend() == "torch"
    finally:
        monkeypatch.delenv("SPIKING_BACKEND")
        importlib.reload(backends)


@pytest.mark.parametrize("name", ["cpu", "triton"])
def test_a_backend_that_cannot_run_falls_back_to_torch_with_one_line(name, log):
    # the reason: the device, or (a CPU-only install of PyTorch) that triton is not installed
    reason = backends.table(name).unavailable(torch.device("meta"))
    assert reason.startswith(("it runs on ", "triton cannot be imported"))
    with backends.use_backend(name):
        assert backends.select(torch.zeros(3, device="meta")) is pytorch
        assert backends.select(torch.zeros(3, device="meta")) is pytorch
    assert len(log.records) == 1
    assert log.records[0].getMessage().startswith(
        f"spiking: backend '{name}' cannot run this ({reason})")
    assert "backend 'torch' runs it" in log.records[0].getMessage()


@pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler")
def test_a_dtype_the_kernels_do_not_take_runs_on_torch_with_one_line(log):
    with backends.use_backend("cpu"):
        assert backends.select(torch.zeros(3, dtype=torch.float16)) is pytorch
        assert backends.select(torch.zeros(3), torch.zeros(3, dtype=torch.float64)) is pytorch
        assert backends.select(torch.zeros(3), torch.zeros(3, dtype=torch.bool)) is cpu
    assert [r.getMessage().split("(")[1].split(")")[0] for r in log.records] == [
        "it runs on torch.float32 or torch.float64, not ['torch.float16']",
        "it runs on torch.float32 or torch.float64, not ['torch.float32', 'torch.float64']"]


def _spikes_and_gradient(neuron, backend):
    torch.manual_seed(0)
    current = (torch.rand(6, 2, 5, dtype=torch.float64) * 1.2).requires_grad_()
    grad = torch.randn(6, 2, 5, dtype=torch.float64)
    with backends.use_backend(backend):
        spikes = neuron(current)
        spikes.backward(grad)
    return spikes.detach(), current.grad


@pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler")
@pytest.mark.parametrize("neuron", [SoftResetLIF, SurrogateLIF])
def test_a_researchers_neuron_runs_fused_scans_generated_from_its_methods(neuron, log):
    # Its spikes and gradients are those of the same methods run one autograd node per step.
    fused = _spikes_and_gradient(neuron(1.0, 0.9), "cpu")
    stepped = _spikes_and_gradient(neuron(1.0, 0.9), "reference")
    assert torch.equal(fused[0], stepped[0])
    assert fused[0].any() and fused[1].abs().sum() > 0
    torch.testing.assert_close(fused[1], stepped[1], rtol=1e-12, atol=0)
    assert not [r for r in log.records if "cannot run" in r.getMessage()]
    assert backends.select(torch.zeros(2, 5), neuron=neuron(1.0, 0.9)) is cpu


class DataDependentLIF(LIFNeuron):
    """A reset that branches on the values: the tracer cannot follow it."""

    def reset(self, potential, spikes):
        if bool((potential > 5.0).any()):
            return torch.zeros_like(potential)
        return super().reset(potential, spikes)


@pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler")
def test_a_method_that_cannot_be_fused_runs_on_torch_with_one_line_naming_it(log):
    fallback = _spikes_and_gradient(DataDependentLIF(1.0, 0.9), "cpu")
    stepped = _spikes_and_gradient(DataDependentLIF(1.0, 0.9), "reference")
    assert torch.equal(fallback[0], stepped[0]) and torch.equal(fallback[1], stepped[1])
    (line,) = [r.getMessage() for r in log.records]
    assert line.startswith("spiking: backend 'cpu' cannot run this (it cannot generate this "
                           "neuron's scans: DataDependentLIF.reset cannot be traced: ")
    assert line.endswith("backend 'torch' runs it, with the same results, more slowly")


@pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler")
def test_a_derivative_that_reads_every_steps_gradient_gets_dense_input_gradients(monkeypatch):
    # Event-driven synapses give their input gradient only at the input's spikes: right for the
    # authors' rule, wrong for a surrogate, so no synapse its neurons feed is marked; those fed
    # by pooling neurons (the authors' rule) still are.
    monkeypatch.setattr(cpu, "EVENT_DENSITY_MAX", 1.0)
    assert LIFNeuron.gradient_only_at_spikes() and not SurrogateLIF.gradient_only_at_spikes()
    assert SoftResetLIF.gradient_only_at_spikes()  # its backward_step is the authors'
    torch.manual_seed(0)
    model = models.get_model("lenet", neuron=SurrogateLIF, width=0.3).double()
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(0.5 * weight.std())
    model.read_synapse_inputs()
    assert [m.input_from_neurons for m in (model.cnn1, model.cnn2, model.fc0, model.fc1)] == [
        False, True, True, False]
    spikes = (torch.rand(6, 2, 1, 28, 28) < 0.3).double()
    grads = {}
    for name in ("cpu", "reference"):
        model.zero_grad()
        with backends.use_backend(name):
            model(spikes).square().sum().backward()
        grads[name] = [p.grad.clone() for p in model.parameters()]
    assert model.fc1.event_chunks > 0
    for fast, stepped in zip(grads["cpu"], grads["reference"]):
        assert stepped.abs().max() > 0
        torch.testing.assert_close(fast, stepped, rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", ["torch", "cpu"])
def test_a_neuron_that_keeps_its_potential_gets_it_in_the_backward(name):
    if name == "cpu" and not cpu_kernels.available():
        pytest.skip("no C compiler")
    current = torch.tensor([[0.5], [0.75], [0.5]], dtype=torch.float64, requires_grad=True)
    with backends.use_backend(name):
        spikes = SurrogateLIF(1.0, 0.5)(current)  # u = 0.5, 1.0, 1.0
        kept = spikes.grad_fn.saved.kept
        assert kept.dtype == torch.float64 and kept.flatten().tolist() == [0.5, 1.0, 1.0]
        spikes.backward(torch.tensor([[0.0], [0.0], [1.0]], dtype=torch.float64))
    assert current.grad.flatten().tolist() == [1.0, 1.0, 1.0]  # surrogate 1 at u = theta


@pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler")
def test_the_choice_decides_which_code_runs(monkeypatch):
    calls = []
    original = cpu._launch
    monkeypatch.setattr(cpu, "_launch", lambda *args: calls.append(args[1].name) or original(*args))
    current = torch.rand(3, 4)
    with backends.use_backend("torch"):
        loops = LIFNeuron(0.5, 0.9)(current)
    assert not calls
    with backends.use_backend("cpu"):
        fused = LIFNeuron(0.5, 0.9)(current)
    assert calls == ["evaluation"] and torch.equal(loops, fused)


def test_the_reference_records_one_autograd_node_per_step():
    current = torch.rand(4, 3, dtype=torch.float64, requires_grad=True)
    with backends.use_backend("reference"):
        spikes = LIFNeuron(0.5, 0.9)(current)
    steps = spikes.grad_fn.next_functions
    assert len(steps) == 4 and all(f.name() == "_NeuronScanBackward" for f, _ in steps)
    with backends.use_backend("torch"):
        assert LIFNeuron(0.5, 0.9)(current).grad_fn.name() == "_NeuronScanBackward"


def test_the_tables_run_only_what_functional_asks_of_them():
    # One table per call: the table the forward chose also runs the backward.
    chosen = []
    original = backends.select

    def spy(*tensors, neuron=None):
        chosen.append(original(*tensors, neuron=neuron))
        return chosen[-1]

    current = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    try:
        backends.select = spy
        functional.spiking_neuron(LIFNeuron(), current).sum().backward()
    finally:
        backends.select = original
    assert len(chosen) == 1
