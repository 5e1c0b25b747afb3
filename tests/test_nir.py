"""NIR export and import (models/nir_graph.py, models/nir_import.py, --export-nir): the mapping
against the NIR definitions, a bit-exact round trip for all four networks, the command line, and
a peer simulator (snnTorch 1.0 under nirtorch) on the shipped model and real digits."""
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import nir
import numpy as np
import pytest
import torch

import models
from benchmarks import nir_peer_check as peer
from models.nir_graph import DT, export_graph, leak_of, time_constant
from models.nir_import import import_graph
from spiking import LIFNeuron, PoissonEncoder, PoolingNeuron
from training import main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "pretrained" / "model_bestT1_mnist_lenet.pth.tar"
DIGITS = Path(__file__).parent / "data" / "mnist_test_digits.pt"
SHAPES = {"lenet": (1, 16, 16), "vgg9": (3, 16, 16), "resnet11": (3, 16, 16),
          "resnet13": (3, 16, 16)}


def lively(arch: str, dtype: torch.dtype, seed: int = 0) -> models.SpikingNetwork:
    """A narrow ``arch`` whose every layer spikes on random input (weights x3)."""
    torch.manual_seed(seed)
    model = models.get_model(arch, width=0.125, input_shape=SHAPES[arch]).to(dtype).eval()
    with torch.no_grad():
        for weight in model.parameters():
            weight.mul_(3)
    return model


def random_spikes(shape: tuple, dtype: torch.dtype, time_steps: int = 6, batch: int = 3):
    generator = torch.Generator().manual_seed(1)
    return torch.randint(-1, 2, (time_steps, batch, *shape), generator=generator).to(dtype)


def run_recording(model: models.SpikingNetwork, spikes: torch.Tensor):
    """``model``'s output and every LIF and pooling layer's spike train, by module name."""
    trains = {}
    hooks = [module.register_forward_hook(
        lambda m, i, out, name=name: trains.setdefault(name, []).append(out.clone()))
        for name, module in model.named_modules() if isinstance(module, (LIFNeuron,
                                                                         PoolingNeuron))]
    model.time_chunk = 2  # chunks too: the imported network carries its states like the original
    with torch.no_grad():
        output = model(spikes)
    for hook in hooks:
        hook.remove()
    return output, {name: torch.cat(chunks) for name, chunks in trains.items()}


def written_and_read(graph: nir.NIRGraph, path: Path) -> nir.NIRGraph:
    nir.write(path, graph)
    return nir.read(path)


@pytest.mark.parametrize("pool", ["avg", "sum"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("arch", list(SHAPES))
def test_export_then_import_gives_the_same_network_bit_for_bit(arch, dtype, pool, tmp_path):
    model = lively(arch, dtype)
    imported = import_graph(written_and_read(export_graph(model, pool), tmp_path / "g.nir"))

    spikes = random_spikes(SHAPES[arch], dtype)
    output, trains = run_recording(model, spikes)
    imported_output, imported_trains = run_recording(imported, spikes)
    assert imported_output.dtype == dtype and torch.equal(imported_output, output)
    assert list(imported_trains) == list(trains)
    for name, train in trains.items():
        assert train.any(), f"{name} never spiked: the comparison would prove little"
        assert torch.equal(imported_trains[name], train), name
    weights = model.state_dict()
    assert sorted(imported.state_dict()) == sorted(weights)  # same names: loadable into the model
    assert all(torch.equal(v, weights[k]) for k, v in imported.state_dict().items())
    assert (imported.leak, imported.threshold, imported.pool_threshold) == (0.99, 1.0, 0.75)


def test_without_leak_the_neurons_are_if_and_the_output_an_integrator(tmp_path):
    torch.manual_seed(0)
    model = models.get_model("lenet", width=0.25, leak=1.0, input_shape=SHAPES["lenet"]).eval()
    graph = export_graph(model)
    assert isinstance(graph.nodes["lif1"], nir.IF) and isinstance(graph.nodes["integrator"], nir.I)
    imported = import_graph(written_and_read(graph, tmp_path / "g.nir"))
    spikes = random_spikes(SHAPES["lenet"], torch.float32)
    assert torch.equal(run_recording(imported, spikes)[0], run_recording(model, spikes)[0])
    assert imported.leak == imported.output.leak == 1.0


def test_the_time_constant_gives_back_the_leak_exactly():
    leaks = [0.5, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999]
    leaks += np.random.default_rng(0).uniform(0.5, 1.0, 2000).tolist()
    assert all(leak_of(time_constant(leak)) == leak for leak in leaks)
    assert abs(time_constant(0.99) - DT / 0.01) < 1e-15


def euler_step(node: nir.NIRNode, v: np.ndarray, current: np.ndarray):
    """One forward Euler step of dt of the node's equations as NIR defines them (nir/ir/neuron.py),
    then the threshold and reset where the node has them; returns (v, spikes)."""
    if isinstance(node, (nir.LIF, nir.LI)):
        v = v + DT / node.tau * (node.v_leak - v + node.r * current)
    else:  # IF, I: dv/dt = R I
        v = v + DT * node.r * current
    if not isinstance(node, (nir.LIF, nir.IF)):
        return v, None
    spikes = v > node.v_threshold
    return np.where(spikes, node.v_reset, v), spikes


def test_each_node_steps_as_the_authors_neuron_under_forward_euler():
    model = models.get_model("lenet", width=0.1)
    graph = export_graph(model)
    generator = np.random.default_rng(0)
    for name, leak in (("lif1", 0.99), ("pool1", 1.0), ("integrator", 0.99)):
        node = graph.nodes[name]
        v, current = generator.normal(0, 1, node.r.shape), generator.normal(0, 1, node.r.shape)
        stepped, spikes = euler_step(node, v, current)
        if name == "integrator":  # the output layer: M <- l * (M + I)
            np.testing.assert_allclose(stepped, leak * (v + current), rtol=1e-12, atol=1e-14)
            continue
        threshold = 1.0 if name == "lif1" else 0.75
        authors = leak * v + current  # u = l * m + I (m after the previous step's reset)
        assert np.array_equal(spikes, authors > threshold)  # strict threshold
        np.testing.assert_allclose(stepped, np.where(authors > threshold, 0.0, authors),
                                   rtol=1e-12, atol=1e-14)


def test_the_graph_validates_and_states_its_mapping():
    graph = export_graph(models.get_model("lenet"), "sum")
    graph.validate_structure()
    assert graph.check_types()
    kinds = [type(node).__name__ for node in graph.nodes.values()]
    assert kinds == ["Input", "Conv2d", "LIF", "SumPool2d", "IF", "Conv2d", "LIF", "SumPool2d",
                     "IF", "Flatten", "Linear", "LIF", "Linear", "LI", "Output"]
    assert np.all(graph.nodes["pool1"].v_threshold == 3.0)  # 0.75 x 4: the sum's 1/4 folded
    assert np.all(graph.nodes["lif1"].v_reset == 0) and np.all(graph.nodes["lif1"].v_leak == 0)
    assert graph.metadata["dt"] == DT and graph.metadata["pooling"] == "sum"
    assert tuple(graph.nodes["cnn1"].output_type["output"]) == (20, 28, 28)

    resnet = export_graph(models.get_model("resnet13", width=0.1))
    assert {a for a, b in resnet.edges if b == "lif22"} == {"cnn22", "shortcut1.0"}
    assert {a for a, b in resnet.edges if b == "lif62"} == {"cnn62", "lif52"}  # identity
    assert isinstance(resnet.nodes["shortcut4"], nir.AvgPool2d)
    vgg = export_graph(models.get_model("vgg9", width=0.1))
    assert not [name for name in vgg.nodes if name.startswith("drop")]


def test_a_graph_this_project_cannot_run_is_refused_by_name():
    graph = export_graph(models.get_model("lenet", width=0.1))
    graph.nodes["lif2"].r = graph.nodes["lif2"].r * 2
    with pytest.raises(ValueError, match="node lif2: input gain"):
        import_graph(graph)
    graph = export_graph(models.get_model("lenet", width=0.1))
    graph.nodes["cnn1"].bias = graph.nodes["cnn1"].bias + 1
    with pytest.raises(ValueError, match="node cnn1: a bias"):
        import_graph(graph)


class SoftResetLIF(LIFNeuron):
    def reset(self, potential, spikes):
        return self.leak * (potential - self.threshold * spikes.to(potential.dtype))


def test_a_neuron_other_than_the_papers_is_not_exported_as_one():
    # A subclass may change the equations that the NIR LIF node would state.
    with pytest.raises(ValueError, match="lif1 is a SoftResetLIF, which has no NIR mapping"):
        export_graph(models.get_model("lenet", width=0.1, neuron=SoftResetLIF))


SCRIPTS = {"mnist_LeNet": "lenet", "cifar10_VGG9": "vgg9", "cifar10_ResNet11": "resnet11",
           "svhn_ResNet13": "resnet13"}


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_every_script_exports_its_fresh_network(script, tmp_path, capsys):
    experiment = importlib.import_module(script).EXPERIMENT
    path = tmp_path / "fresh.nir"
    main(experiment, ["--export-nir", str(path), "--width", "0.125", "--nir-pool", "sum"])
    out = capsys.readouterr().out
    assert f"freshly initialised weights (seed {experiment.seed})" in out
    assert f"wrote {path}" in out
    graph = nir.read(path)
    assert graph.metadata["arch"] == SCRIPTS[script] and graph.metadata["pooling"] == "sum"
    assert [p.name for p in tmp_path.iterdir()] == ["fresh.nir"]


def test_the_shipped_model_exports_from_the_command_line_and_comes_back(tmp_path):
    path = tmp_path / "X.nir"
    done = subprocess.run([sys.executable, "mnist_LeNet.py", "--resume", str(SHIPPED),
                           "--export-nir", str(path)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "epoch 20" in done.stdout and "dt = 0.0001 s" in done.stdout
    graph = nir.read(path)
    assert graph.metadata["time_steps"] == 100 and graph.metadata["input_scale"] == 0.5

    shipped = models.get_model("lenet")
    shipped.load_state_dict(torch.load(SHIPPED, weights_only=True)["state_dict"])
    digits = torch.load(DIGITS, weights_only=True)
    images = digits["images"][:4].unsqueeze(1).float() / 255
    spikes = PoissonEncoder(20, 0.5, torch.Generator().manual_seed(1))(images)
    with torch.no_grad():
        assert torch.equal(import_graph(graph).eval()(spikes), shipped.eval()(spikes))


@pytest.mark.parametrize("argv, message", [
    (["--resume", "missing.pth.tar"], "error: no checkpoint found at 'missing.pth.tar'"),
    (["--width", "0.5", "--resume", str(SHIPPED)], "does not fit lenet at this --width"),
    ([], "error: cannot write"),
])
def test_bad_input_is_one_error_line_status_2_and_no_file(argv, message, tmp_path, capsys):
    from mnist_LeNet import EXPERIMENT

    target = tmp_path / "missing_dir" / "X.nir" if not argv else tmp_path / "X.nir"
    with pytest.raises(SystemExit) as exit_info:
        main(EXPERIMENT, [*argv, "--export-nir", str(target)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_directory_as_the_path_is_refused_and_left_alone(tmp_path, capsys):
    from mnist_LeNet import EXPERIMENT

    with pytest.raises(SystemExit) as exit_info:
        main(EXPERIMENT, ["--export-nir", str(tmp_path), "--width", "0.1"])
    assert exit_info.value.code == 2
    assert "error: cannot write" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def installed(*names: str) -> bool:
    return all(importlib.util.find_spec(name) for name in names)


needs_snntorch = pytest.mark.skipif(
    not installed("snntorch", "nirtorch"),
    reason="the peer check needs snnTorch and nirtorch: pip install -e \".[test]\"")
PEER_PACKAGES = {"snntorch": ("snntorch", "nirtorch"), "norse": ("norse", "nirtorch"),
                 "spikingjelly": ("spikingjelly", "nirtorch")}


@pytest.mark.parametrize("pool", ["avg", "sum"])
@pytest.mark.parametrize("name", list(PEER_PACKAGES))
def test_a_peer_runs_the_shipped_model_as_this_project_does(name, pool):
    if not installed(*PEER_PACKAGES[name]):
        pytest.skip(f"{name} is not installed (snnTorch and Norse: pip install -e \".[test]\"; "
                    "SpikingJelly: pip install -e \".[bench]\")")
    model, simulator = peer.shipped_lenet(), peer.PEERS[name]
    network = simulator.build(peer.through_a_file(export_graph(model, pool)))
    digits = torch.load(DIGITS, weights_only=True)
    images = digits["images"][:6].unsqueeze(1).float() / 255
    result = peer.compare(model, simulator, network, images, digits["labels"][:6], 40, 0.5, 1, 6)
    assert result.agree == result.images == 6 and result.peer_correct >= 5
    assert list(result.peer_spikes) == list(result.project_spikes)
    for layer, ours in result.project_spikes.items():
        assert ours > 0 and abs(result.peer_spikes[layer] - ours) <= 0.01 * ours, layer


@needs_snntorch
def test_snntorch_importer_departs_from_nir_where_the_docs_say():
    """docs/nir.md names these departures of snnTorch 1.0's importer; the peer check repairs
    them. If snnTorch fixes one, this test says which paragraph to update."""
    from snntorch.import_nir import _nir_to_snntorch_module

    shape = np.ones(3)
    with pytest.raises(AssertionError, match="r != 1"):  # IF with r = 1/dt, unit gain at dt
        _nir_to_snntorch_module(nir.IF(r=shape / DT, v_threshold=shape), init_hidden=True)
    unit = _nir_to_snntorch_module(nir.IF(r=shape, v_threshold=shape), init_hidden=True)
    assert float(unit.beta) == pytest.approx(0.9) and unit.reset_mechanism == "subtract"
    flatten = _nir_to_snntorch_module(nir.Flatten(input_type=np.array([2, 3, 3]), start_dim=0),
                                      init_hidden=True)
    assert flatten.start_dim == 0  # torch's dim 0 is the batch
    assert _nir_to_snntorch_module(nir.LI(tau=shape, r=shape, v_leak=0 * shape)) is None
