"""Runs that stop early: SIGINT/SIGTERM write a mid-epoch checkpoint and a resumed run ends bit
for bit as the uninterrupted one (CPU, workers 0; in-process and under torchrun with gloo);
--save-every; a layer gone silent stops the run; a previous run's outputs are not overwritten."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import training.engine
from spiking import LIFNeuron, PoolingNeuron
from training import Interrupted, UsageError, main, run
from training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import cifar10_VGG9  # noqa: E402
import mnist_LeNet  # noqa: E402

# wide and long enough for every layer to fire, so that training changes every weight
QUICK = dict(synthetic=True, synthetic_size=16, time_steps=8, width=0.5, batch_size=4,
             test_batch_size=8, workers=0, print_freq=1000)
# 4 steps per epoch; momentum gives the optimiser a state, the milestone a schedule to keep
LENET = replace(mnist_LeNet.EXPERIMENT, **QUICK, threshold=0.5, pool_threshold=0.5, lr=0.002,
                momentum=0.9, milestones=(1,), epochs=2)
# VGG9 adds dropout masks to the draws that must line up; on the synthetic set its last layers
# fall silent in epoch 2 (a dead network, which the run would stop at), so it only warns here
VGG9 = replace(cifar10_VGG9.EXPERIMENT, **{**QUICK, "width": 0.25, "time_steps": 6},
               threshold=0.5, pool_threshold=0.5, lr=0.0005, momentum=0.9, epochs=2,
               allow_silent=True)


def _last(out: Path, settings) -> dict:
    return load_checkpoint(str(out / f"checkpointT1_{settings.tag}_synthetic.pth.tar"))


def _same_training(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"]
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for i, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])
    for row_a, row_b in zip(a["history"], b["history"], strict=True):
        for name in ("lr", "train_loss", "train_top1", "train_ce", "test_loss", "test_top1"):
            assert row_a[name] == row_b[name], name


def _send(signums) -> None:
    for signum in signums:
        os.kill(os.getpid(), signum)


def _trigger(monkeypatch, when: str, epoch: int, at: int, signums):
    """Send ``signums`` to this process after training step ``at`` (``"step"``), before test batch
    ``at`` of the epoch's test pass (``"test"``), or while the epoch's checkpoint is written
    (``"save"``); returns the ``after_step`` hook to pass to ``run``."""
    if when == "step":
        return lambda e, s: _send(signums) if (e, s) == (epoch, at) else None
    if when == "test":
        original, passes = training.engine.evaluate, []

        def evaluate(*args):
            passes.append(args)
            check = args[-1]  # the engine's before_batch

            def before_batch(index: int) -> None:
                if (len(passes) - 1, index) == (epoch, at):
                    _send(signums)
                check(index)

            return original(*args[:-1], before_batch)

        monkeypatch.setattr(training.engine, "evaluate", evaluate)
    else:
        original_save = training.engine.save_checkpoint

        def save(contents, *args):
            if (contents["epoch"], contents.get("step")) == (epoch + 1, None):
                _send(signums)
            return original_save(contents, *args)

        monkeypatch.setattr(training.engine, "save_checkpoint", save)
    return None


TEST_PASS = "the epoch's training is saved, and its test pass runs again on resume"


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory):
    """The uninterrupted run of some settings (made once per module), in which every layer
    fires and training changes every weight; returns its out-dir."""
    done = {}

    def straight(settings) -> Path:
        if settings.tag not in done:
            out = tmp_path_factory.mktemp(f"straight_{settings.tag}")
            initial = run(replace(settings, out_dir=str(out), epochs=1, start_epoch=1)).model
            run(replace(settings, out_dir=str(out), overwrite=True))
            trained = _last(out, settings)
            assert {"lif_fc0", "output"} <= set(trained["fired"])
            assert all(not torch.equal(value, trained["state_dict"][key])
                       for key, value in initial.state_dict().items())
            done[settings.tag] = out
        return done[settings.tag]

    return straight


@pytest.mark.parametrize("settings, when, epoch, at, signums, where, saved", [
    (LENET, "step", 1, 2, [signal.SIGINT], "at epoch 2, step 3", (1, 3)),
    (VGG9, "step", 0, 1, [signal.SIGTERM], "at epoch 1, step 2", (0, 2)),
    (LENET, "step", 0, 3, [signal.SIGTERM], "at epoch 1, step 4", (0, 4)),  # the test pass not
    # after the last step: its test pass stops at once, and the trained epoch is kept
    (LENET, "step", 0, 4, [signal.SIGINT],
     f"during the test pass of epoch 1, before test batch 1 of 2: {TEST_PASS}", (0, 4)),
    # a second signal during the test pass still keeps the trained epoch
    (LENET, "test", 1, 1, [signal.SIGINT, signal.SIGTERM],
     f"during the test pass of epoch 2, before test batch 2 of 2: {TEST_PASS}", (1, 4)),
    (LENET, "save", 0, 0, [signal.SIGTERM, signal.SIGINT], "after epoch 1", (1, 0))],
    ids=["lenet-sigint", "vgg9-sigterm", "lenet-last-step", "lenet-epoch-end", "test-pass-twice",
         "saving"])
def test_interrupted_run_resumes_bit_identical(straight_runs, tmp_path, capsys, monkeypatch,
                                               settings, when, epoch, at, signums, where, saved):
    straight = straight_runs(settings)
    out = tmp_path / "interrupted"
    with monkeypatch.context() as patch, pytest.raises(Interrupted) as stop:
        hook = _trigger(patch, when, epoch, at, signums)
        run(replace(settings, out_dir=str(out)), after_step=hook)
    assert stop.value.status == 128 + signums[0]
    stopped = _last(out, settings)
    assert (stopped["epoch"], stopped.get("step", 0)) == saved
    if saved[1]:  # the step under way when the signal was seen is finished
        assert len(stopped["ranks"]) == 1 and stopped["ranks"][0]["meters"][4] == 4 * saved[1]
    last = out / f"checkpointT1_{settings.tag}_synthetic.pth.tar"
    assert (f"interrupted {where}; to resume, run the same command with --resume {last}\n"
            in capsys.readouterr().out)

    result = run(replace(settings, out_dir=str(out), resume=str(last)))
    position = (f"inside epoch {saved[0] + 1}, after step {saved[1]}" if saved[1]
                else f"epoch {saved[0]}")
    assert f"=> loaded checkpoint '{last}' ({position})\n" in capsys.readouterr().out
    _same_training(_last(straight, settings), _last(out, settings))
    assert "step" not in _last(out, settings)
    assert [row["epoch"] for row in result.history] == [1, 2]


def test_main_exits_143_on_sigterm_with_one_line(tmp_path, capsys, monkeypatch):
    original = training.engine.train_one_epoch

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives before the first step
        return original(*args, **kwargs)

    monkeypatch.setattr(training.engine, "train_one_epoch", terminated)
    with pytest.raises(SystemExit) as exit_info:
        main(mnist_LeNet.EXPERIMENT, ["--synthetic", "--synthetic-size", "16", "-T", "2",
                                      "--width", "0.125", "-b", "8", "-j", "0",
                                      "--out-dir", str(tmp_path)])
    assert exit_info.value.code == 143
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.err == ""
    lines = [line for line in captured.out.splitlines() if line.startswith("interrupted")]
    assert lines == [f"interrupted at epoch 1, step 1; to resume, run the same command with "
                     f"--resume {tmp_path}/checkpointT1_mnist_lenet_synthetic.pth.tar"]
    assert load_checkpoint(str(tmp_path / "checkpointT1_mnist_lenet_synthetic.pth.tar"))["step"] == 1
    assert not (tmp_path / "model_bestT1_mnist_lenet_synthetic.pth.tar").exists()


def test_a_second_signal_stops_at_once_and_names_no_checkpoint_that_does_not_exist(tmp_path,
                                                                                    capsys):
    with pytest.raises(Interrupted) as stop:
        run(replace(LENET, out_dir=str(tmp_path)),
            after_step=lambda e, s: _send([signal.SIGINT, signal.SIGINT]) if s == 1 else None)
    assert stop.value.status == 130
    lines = [line for line in capsys.readouterr().out.splitlines() if "interrupted" in line]
    assert lines == ["interrupted again: stopped at once (what the last checkpoint does not hold "
                     "is lost); no checkpoint was written, so there is nothing to resume"]
    assert not list(tmp_path.glob("*.pth.tar"))

    # resumed from an epoch's checkpoint, the hint names that checkpoint
    run(replace(LENET, out_dir=str(tmp_path / "one"), epochs=1))
    first = tmp_path / "one" / "checkpointT1_mnist_lenet_synthetic.pth.tar"
    with pytest.raises(Interrupted):
        run(replace(LENET, out_dir=str(tmp_path / "two"), resume=str(first)),
            after_step=lambda e, s: _send([signal.SIGTERM, signal.SIGTERM]) if s == 1 else None)
    assert capsys.readouterr().out.splitlines()[-1].endswith(
        f"to resume, run the same command with --resume {first}")


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one_epoch")
    run(replace(LENET, out_dir=str(out), epochs=1))
    return out / "checkpointT1_mnist_lenet_synthetic.pth.tar"


@pytest.mark.parametrize("signums, stats", [([signal.SIGTERM], True), ([signal.SIGINT], False),
                                            ([signal.SIGINT, signal.SIGINT], False)])
def test_signals_during_evaluate_say_nothing_was_written(one_epoch, tmp_path, capsys, monkeypatch,
                                                         signums, stats):
    checkpoint = one_epoch
    out = tmp_path / "evaluated"
    _trigger(monkeypatch, "test", 0, 1, signums)
    argv = ["--synthetic", "--synthetic-size", "16", "-T", "8", "--width", "0.5",
            "--test-batch-size", "8", "-j", "0", "--resume", str(checkpoint), "--evaluate",
            "--out-dir", str(out), *(["--stats"] if stats else [])]
    with pytest.raises(SystemExit) as exit_info:
        main(mnist_LeNet.EXPERIMENT, argv)
    assert exit_info.value.code == 128 + signums[0]
    captured = capsys.readouterr()
    assert captured.err == "" and "Prec@1 " not in captured.out
    expected = ("interrupted again: the evaluation stopped at once; nothing was written"
                if len(signums) > 1 else
                "interrupted during the evaluation, before test batch 2 of 2: nothing was written")
    assert captured.out.splitlines()[-1] == expected
    assert not out.exists()


def test_save_every_writes_mid_epoch_checkpoints_without_changing_the_run(straight_runs,
                                                                          tmp_path):
    straight = straight_runs(LENET)
    out = tmp_path / "saving"
    seen = []

    def look(epoch: int, step: int) -> None:  # the file holds the previous step's save
        if step > 1:
            seen.append((load_checkpoint(str(out / "checkpointT1_mnist_lenet_synthetic.pth.tar"))
                         ["step"], step))

    run(replace(LENET, out_dir=str(out), save_every=1e-9), after_step=look)
    assert seen and all(saved == step - 1 for saved, step in seen)
    _same_training(_last(straight, LENET), _last(out, LENET))


def _silence_everything(model_holder: list):
    def hook(epoch: int, step: int) -> None:
        if (epoch, step) == (0, 4):
            for module in model_holder[0].modules():
                if isinstance(module, (LIFNeuron, PoolingNeuron)):
                    module.threshold = 1e9
    return hook


@pytest.fixture
def silenced(monkeypatch):
    """A hook that, after the first epoch, sets every threshold so high that nothing fires."""
    holder = []
    original = training.engine.build_model

    def build(settings):
        holder.append(original(settings))
        return holder[-1]

    monkeypatch.setattr(training.engine, "build_model", build)
    return _silence_everything(holder)


def test_a_layer_gone_silent_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, silenced,
                                                                             capsys):
    settings = replace(LENET, time_steps=8, width=0.5, epochs=3, out_dir=str(tmp_path))
    with pytest.raises(UsageError) as error:
        run(settings, after_step=silenced)
    message = str(error.value)
    assert message.startswith("lif1, pool1, lif2") and "went silent in epoch 2" in message
    assert (f"stopped, the best checkpoint, {tmp_path}/model_bestT1_mnist_lenet_synthetic.pth.tar "
            "(test top-1 ") in message
    assert f"the last, {tmp_path}/checkpointT1_mnist_lenet_synthetic.pth.tar, are kept" in message
    assert "\n" not in message
    kept = load_checkpoint(str(tmp_path / "checkpointT1_mnist_lenet_synthetic.pth.tar"))
    assert kept["epoch"] == 1 and {"lif1", "pool1", "lif2"} <= set(kept["fired"])
    assert load_checkpoint(str(tmp_path / "model_bestT1_mnist_lenet_synthetic.pth.tar"))["epoch"] == 1


def test_allow_silent_only_warns(tmp_path, silenced, capsys):
    settings = replace(LENET, time_steps=8, width=0.5, epochs=2, out_dir=str(tmp_path),
                       allow_silent=True)
    result = run(settings, after_step=silenced)
    assert len(result.history) == 2
    assert "warning: lif1, pool1, lif2" in capsys.readouterr().out


def test_a_previous_run_is_not_overwritten_without_overwrite(tmp_path):
    settings = replace(LENET, epochs=1, out_dir=str(tmp_path))
    run(settings)
    before = (tmp_path / "checkpointT1_mnist_lenet_synthetic.pth.tar").read_bytes()
    with pytest.raises(UsageError) as error:
        run(settings)
    last = tmp_path / "checkpointT1_mnist_lenet_synthetic.pth.tar"
    assert str(error.value) == (
        f"{tmp_path} holds a previous run's checkpointT1_mnist_lenet_synthetic.pth.tar, "
        "model_bestT1_mnist_lenet_synthetic.pth.tar, metrics_mnist_lenet_synthetic.csv; "
        f"continue it with --resume {last}, or start over with --overwrite")
    assert last.read_bytes() == before
    run(replace(settings, overwrite=True))
    assert last.read_bytes() != before  # written again (the history's timings differ)


@pytest.mark.slow
def test_torchrun_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    """2 gloo ranks: stopped by SIGTERM on rank 0 inside the epoch, resumed from the mid-epoch
    checkpoint; the weights equal those of an uninterrupted 2-rank run, bit for bit."""
    from test_distributed import ARGS, _free_port

    def launch(dump: Path, *extra: str, stop_at: str = "") -> subprocess.CompletedProcess:
        dump.mkdir(exist_ok=True)
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                   "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                   "--master_port", str(_free_port()), str(REPO / "tests" / "ddp_worker.py"),
                   str(dump), *ARGS, "--out-dir", str(tmp_path / dump.name), *extra]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
               "PYTHONDONTWRITEBYTECODE": "1", "DDP_WORKER_STOP_AT_STEP": stop_at}
        return subprocess.run(command, cwd=REPO, env=env, text=True, capture_output=True,
                              timeout=180)

    straight = launch(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    stopped = launch(tmp_path / "resumed", stop_at="1")
    assert stopped.returncode != 0 and "interrupted at epoch 1, step 2; to resume, run the same " \
        "command with --resume" in stopped.stdout, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    last = tmp_path / "resumed" / "checkpointT1_mnist_lenet_synthetic.pth.tar"
    checkpoint = load_checkpoint(str(last))
    assert checkpoint["step"] == 2 and len(checkpoint["ranks"]) == 2
    resumed = launch(tmp_path / "resumed", "--resume", str(last))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for rank in range(2):
        a = torch.load(tmp_path / "straight" / f"rank{rank}.pt", weights_only=True)
        b = torch.load(tmp_path / "resumed" / f"rank{rank}.pt", weights_only=True)
        for key, value in a["weights"].items():
            assert torch.equal(value, b["weights"][key]), (rank, key)
        assert a["evaluate"] == b["evaluate"]
