"""The benchmark (benchmarks/bench.py) runs end to end in seconds at toy sizes.

Only that it works is tested here; speed and memory are ratios the script reports, never asserted.
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import models
from benchmarks import bench

BASELINE_VARIANTS = ("project", "authors", "ann")


def test_all_variants_are_timed_and_measured_with_finite_ratios():
    # Big enough for every variant's step to allocate a few MiB, so no memory ratio is 0 / 0.
    settings = bench.BenchSettings(arch="vgg9", time_steps=2, batch=4, width=0.25, threads=1)
    variants = bench.build_variants(settings)
    assert tuple(variants) == BASELINE_VARIANTS  # the peers are LeNets: not offered for VGG9
    samples = bench.time_variants(variants, repeats=1, warmup=0)
    memory = bench.measure_memory(settings)
    summary = bench.summarise(samples, memory)

    for name in BASELINE_VARIANTS:
        assert all(len(samples[name][phase]) == 1 for phase in bench.PHASES)
        assert memory[name]["peak"] > memory[name]["baseline"] > 0
    assert list(summary["ratios"]) == ["project/authors", "project/ann"]
    ratios = [value for row in summary["ratios"].values() for value in row.values()]
    assert len(ratios) == 12 and all(math.isfinite(r) and r > 0 for r in ratios)


def test_residual_network_runs_every_variant_with_a_mask_per_hidden_layer():
    settings = bench.BenchSettings(arch="resnet11", time_steps=2, batch=2, width=0.0625)
    variants = bench.build_variants(settings)
    samples = bench.time_variants(variants, repeats=1, warmup=0)
    assert set(samples) == set(BASELINE_VARIANTS)
    for variant in variants.values():
        assert variant.eval_step().samples == 2


def test_dense_floor_is_the_relu_network_with_the_same_layers():
    weights = {k: v.double() for k, v in models.get_model("lenet", width=0.25).state_dict().items()}
    time_steps, batch = 2, 3
    images = torch.rand(time_steps * batch, 1, 28, 28, dtype=torch.float64)
    floor = bench.DenseFloor("lenet", weights, time_steps, dropout=0.0).train()

    x = F.avg_pool2d(F.relu(F.conv2d(images, weights["cnn1.weight"], padding=2)), 2)
    x = F.avg_pool2d(F.relu(F.conv2d(x, weights["cnn2.weight"], padding=2)), 2)
    x = F.relu(F.linear(x.flatten(1), weights["fc0.weight"]))
    expected = F.linear(x, weights["fc1.weight"]).unflatten(0, (time_steps, batch)).mean(0)
    torch.testing.assert_close(floor(images), expected, rtol=0, atol=0)
    assert set(floor.hidden_shapes) == {"cnn1", "cnn2", "fc0"}


def test_per_step_spikes_follow_the_signed_rate_code():
    images = torch.tensor([[-2.0, -0.4, 0.0, 0.4, 2.0]])
    spikes = bench.PerStepPoissonSpikes(images, time_steps=7, scale=1.0)
    assert spikes.dim() == 3 and spikes.shape == (7, 1, 5)
    step = torch.stack([spikes[t] for t in range(200)])
    assert (step[..., 0] == -1).all() and (step[..., 4] == 1).all() and (step[..., 2] == 0).all()
    assert (step[..., 1] <= 0).all() and (step[..., 3] >= 0).all()
    assert 0.25 < step[..., 3].mean() < 0.55



def test_amp_runs_the_project_synapses_under_bf16_autocast():
    from spiking import LIFNeuron

    currents = []

    def record(module, args, output):
        if isinstance(module, LIFNeuron):
            currents.append(args[0].dtype)

    settings = bench.BenchSettings(time_steps=2, batch=2, width=0.25, variants=("project",),
                                   amp=True)
    variants = bench.build_variants(settings)
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        variants["project"].train_step()
        variants["project"].eval_step()
    finally:
        handle.remove()
    assert currents and set(currents) == {torch.bfloat16}


def write_tiny_mnist(root, images=6):
    """torchvision's raw MNIST files with ``images`` random digits in each split."""
    import struct

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "t10k"):
        pixels = (torch.rand(images, 28, 28, generator=gen) * 255).to(torch.uint8)
        pixels[:, :, :14] = 0  # half of every image dark, like the digits' background
        (raw / f"{split}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, images, 28, 28) + pixels.numpy().tobytes())
        labels = torch.arange(images, dtype=torch.uint8) % 10
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, images) + labels.numpy().tobytes())


def test_real_digits_and_checkpoint_weights_reach_every_variant(tmp_path):
    write_tiny_mnist(tmp_path)
    trained = models.get_model("lenet", width=0.25)
    with torch.no_grad():
        for weight in trained.parameters():
            weight.mul_(1.5)
    torch.save({"state_dict": trained.state_dict(), "arch": "lenet"}, tmp_path / "ckpt.pth.tar")
    variants = bench.build_variants(bench.BenchSettings(
        time_steps=2, batch=3, width=0.25, variants=BASELINE_VARIANTS, data=tmp_path,
        resume=str(tmp_path / "ckpt.pth.tar")))
    for name, value in trained.state_dict().items():
        assert torch.equal(variants["project"].model.state_dict()[name], value)
    densities = bench.input_densities(variants["project"])
    assert list(densities) == ["cnn1", "cnn2", "fc0", "fc1"]
    # a digit's dark half never spikes: the input density is at most half the pixels' rate
    assert 0 < densities["cnn1"]["density"] < 0.5 * 0.5
    assert all(row["event_chunks"] + row["dense_chunks"] == 1 for row in densities.values())
    assert variants["authors"].eval_step().samples == 3


def test_threshold_scale_makes_spikes_denser():
    def hidden_density(scale):
        settings = bench.BenchSettings(time_steps=3, batch=2, width=0.25,
                                       variants=("project",), threshold_scale=scale)
        variant = bench.build_variants(settings)["project"]
        return bench.input_densities(variant)["fc0"]["density"]

    assert hidden_density(0.3) > hidden_density(1.0)


def test_bad_input_is_one_error_line_and_exit_status_2(tmp_path, capsys):
    for argv in (["--data", str(tmp_path)], ["--resume", str(tmp_path / "missing.pth")],
                 ["--variants", "project,nest"], ["--arch", "vgg9", "--variants", "snntorch"],
                 ["--neuron", "adaptive"], ["--neuron", "spiking.neurons:NoSuchNeuron"],
                 ["--neuron", "torch.nn:ReLU"], ["--variants", "ann", "--neuron", "plif"],
                 ["--json", str(tmp_path / "no-such-folder" / "out.json")]):
        with pytest.raises(SystemExit) as exit_info:
            bench.main(["-T", "2", "-b", "2", "--width", "0.25", "--variants", "project",
                        "--no-memory", *argv])
        assert exit_info.value.code == 2, argv
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("error: "), (argv, error)


@pytest.mark.parametrize("load", [0.1, 5.0])
def test_a_load_above_the_cores_marks_the_timings_unreliable(monkeypatch, tmp_path, capsys,
                                                             load):
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    out = tmp_path / "bench.json"
    bench.main(["-T", "2", "-b", "2", "--width", "0.25", "--variants", "project,authors",
                "--repeats", "1", "--warmup", "0", "--no-memory", "--json", str(out)])
    printed = capsys.readouterr()
    result = json.loads(out.read_text())
    busy = load > 2

    assert result["reliable"] is not busy
    assert result["load"]["before"]["busy"] is busy and result["load"]["after"]["busy"] is busy
    lines = printed.out.splitlines()
    times = [line for line in lines if line.startswith(("train ", "eval "))]
    assert len(times) == 4 and all(line.endswith(" *") is busy for line in times)
    ratios = next(line for line in lines if line.startswith("project/authors"))
    assert ratios.count("x *") == (4 if busy else 0)  # train, eval, their fastest samples
    assert ("UNRELIABLE TIMINGS" in printed.out) is busy
    assert printed.err.startswith("warning: UNRELIABLE TIMINGS") is busy


def test_the_report_says_what_it_measured_and_judges_nothing(capsys):
    bench.main(["-T", "2", "-b", "2", "--width", "0.25", "--variants", "project,ann",
                "--repeats", "1", "--warmup", "0", "--no-memory"])
    out = capsys.readouterr().out
    assert "images  : 2 synthetic images" in out
    assert "weights : the model's initialisation (untrained)" in out
    assert "variants: project, ann" in out and "project/ann" in out
    assert "target" not in out and " met" not in out


def test_another_checkouts_code_is_not_measured_in_silence(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench, "ROOT", tmp_path)  # as if bench.py lay in another checkout
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["-T", "2", "-b", "2", "--width", "0.25", "--variants", "project"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: this script is in {tmp_path} but imports")


def test_another_neuron_runs_on_the_projects_weights_and_is_compared_with_the_papers(tmp_path):
    # Batch 8: the project's step then allocates about 1.6 MiB over its baseline; at batch 2
    # it was about 0.1 MiB, sometimes none, and its memory ratio undefined (0 / 0)
    settings = bench.BenchSettings(time_steps=3, batch=8, width=0.25, variants=("project",),
                                   neurons=("soft_reset", "fast_sigmoid", "plif"), memory=True)
    variants = bench.build_variants(settings)
    names = ["project", "project:soft_reset", "project:fast_sigmoid", "project:plif"]
    assert list(variants) == names
    weights = variants["project"].model.state_dict()
    for name in names[1:]:
        model = variants[name].model
        assert type(model.lif1).__name__ == {"project:soft_reset": "SoftResetLIF",
                                             "project:fast_sigmoid": "FastSigmoidLIF",
                                             "project:plif": "PLIFNeuron"}[name]
        theirs = model.state_dict()
        assert all(torch.equal(theirs[key], value) for key, value in weights.items())
    summary = bench.summarise(bench.time_variants(variants, repeats=1, warmup=0),
                              bench.measure_memory(settings))
    assert list(summary["ratios"]) == [f"{name}/project" for name in names[1:]]
    samples = summary["time"]
    row = summary["ratios"]["project:plif/project"]
    assert row["train"] == samples["project:plif"]["train"]["median"] / samples["project"][
        "train"]["median"]
    assert all(math.isfinite(value) and value > 0 for value in row.values())


def test_settings_survive_the_command_line(tmp_path):
    settings = bench.BenchSettings(
        arch="vgg9", time_steps=5, batch=3, device="cpu", width=0.5, variants=("project", "ann"),
        neurons=("plif", "examples.custom_neuron:SoftResetLIF"), repeats=2, warmup=0,
        memory=False, seed=4, amp=True, time_chunk=2, threads=1,
        data=tmp_path, resume=str(tmp_path / "run.pth.tar"), threshold_scale=0.5,
        event_density_max=0.1, json=tmp_path / "out.json")
    assert bench.parse_args(settings.argv()) == (settings, None)
    assert bench.parse_args([]) == (bench.BenchSettings(), None)


def test_crossover_and_density_sweep_run_at_toy_sizes(capsys):
    from benchmarks import crossover, density_sweep

    crossover.main(["--images", "4", "--repeats", "1", "--densities", "0.05,0.5",
                    "--layers", "lenet cnn2"])
    density_sweep.main(["-T", "2", "-b", "2", "--width", "0.25", "--scales", "1,0.5",
                        "--repeats", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    assert "lenet cnn2" in out and "crossover" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("1.00", "0.50"))]
    assert len(rows) == 2 and all(float(row[-1]) > 0 for row in rows)


def test_profile_times_the_kernels_inside_both_steps_and_restores_them(capsys):
    from benchmarks import profile_step
    from spiking.backends import cpu, event_kernels

    if not event_kernels.available():
        pytest.skip("no C compiler: the kernels cannot be built")
    originals = (cpu._launch, event_kernels.find_events)
    profile_step.main(["--arch", "lenet", "-T", "4", "-b", "2", "--width", "0.25",
                       "--repeats", "1", "--threads", "1"])
    out = capsys.readouterr().out
    train, evaluation = out.split("eval step:")
    assert "lenet T=4 B=2 train step:" in train
    for kernel in ("cpu._launch", "event_kernels.find_events"):
        assert kernel in train
    assert "cpu._launch" in evaluation
    assert (cpu._launch, event_kernels.find_events) == originals
