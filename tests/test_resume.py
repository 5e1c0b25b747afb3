"""Exact resume and determinism on the CPU (workers 0): a run stopped after epoch k and resumed
with --resume ends with the weights and optimiser state of the uninterrupted run, bit for bit;
two runs with the same seed agree bit for bit; --deterministic sets the CUDA flags; --amp runs
(bfloat16 autocast) on the CPU."""
from __future__ import annotations

import csv
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from training import Interrupted, main, run
from training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import cifar10_VGG9  # noqa: E402
import mnist_LeNet  # noqa: E402

# Three steps are too few for every layer to fire on the realistic-density stand-in: a silent
# layer only warns here (tests/test_interrupt.py tests the stop).
QUICK = dict(synthetic=True, synthetic_size=16, time_steps=3, width=0.125, batch_size=4,
             test_batch_size=8, workers=0, print_freq=1000, allow_silent=True)
# LeNet as published but tiny, with momentum (an optimiser state to restore) and a milestone
# after the interruption; VGG9 adds dropout masks to the random draws that must line up.
LENET = replace(mnist_LeNet.EXPERIMENT, **QUICK, momentum=0.9, milestones=(2,), epochs=3)
VGG9 = replace(cifar10_VGG9.EXPERIMENT, **QUICK, momentum=0.9, milestones=(1,), epochs=2)



def _last(out: Path, settings) -> dict:
    return load_checkpoint(str(out / f"checkpointT1_{settings.tag}_synthetic.pth.tar"))


@pytest.mark.parametrize("settings, stop", [(LENET, 1), (VGG9, 1)], ids=["lenet", "vgg9"])
def test_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path, settings, stop):
    straight = tmp_path / "straight"
    run(replace(settings, out_dir=str(straight)))

    resumed = tmp_path / "resumed"
    run(replace(settings, out_dir=str(resumed), epochs=stop))  # "killed" after epoch `stop`
    result = run(replace(settings, out_dir=str(resumed),
                         resume=str(resumed / f"checkpointT1_{settings.tag}_synthetic.pth.tar")))

    a, b = _last(straight, settings), _last(resumed, settings)
    assert a["epoch"] == b["epoch"] == settings.epochs
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    momentum_a, momentum_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert momentum_a and all(torch.equal(momentum_a[i]["momentum_buffer"],
                                          momentum_b[i]["momentum_buffer"]) for i in momentum_a)
    assert a["scheduler"] == b["scheduler"]
    assert [r["test_loss"] for r in a["history"]] == [r["test_loss"] for r in result.history]


def test_two_runs_with_the_same_seed_are_identical_and_another_seed_differs(tmp_path):
    one = run(replace(LENET, epochs=1, out_dir=str(tmp_path / "a"))).model.state_dict()
    two = run(replace(LENET, epochs=1, out_dir=str(tmp_path / "b"))).model.state_dict()
    other = run(replace(LENET, epochs=1, seed=7, out_dir=str(tmp_path / "c"))).model.state_dict()
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not all(torch.equal(one[k], other[k]) for k in one)


@pytest.fixture
def restore_determinism():
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[:2]
    torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


def test_deterministic_flag_sets_the_cuda_determinism_switches(tmp_path, restore_determinism,
                                                               monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    run(replace(LENET, epochs=1, deterministic=True, out_dir=str(tmp_path)))
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_amp_runs_bfloat16_autocast_on_the_cpu(tmp_path, capsys):
    result = run(replace(LENET, epochs=1, amp=True, out_dir=str(tmp_path)))
    assert "amp bfloat16" in capsys.readouterr().out
    row = result.history[0]
    assert all(torch.isfinite(torch.tensor(row[k])) for k in ("train_loss", "test_loss"))
    assert all(v.dtype == torch.float32 for v in result.model.state_dict().values())


def _stopped_inside_epoch_1(out: Path, settings, step: int) -> Path:
    """A checkpoint written by SIGTERM after ``step`` steps of epoch 1 (``step * 4`` images):
    the signal is seen after the step that follows it."""
    def terminate(epoch: int, done: int) -> None:
        if (epoch, done) == (0, step - 1):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted):
        run(replace(settings, out_dir=str(out)), after_step=terminate)
    return out / f"checkpointT1_{settings.tag}_synthetic.pth.tar"


@pytest.mark.parametrize("batch", [2, 16])
def test_a_mid_epoch_resume_with_another_batch_size_trains_the_rest_of_the_epoch(tmp_path, capsys,
                                                                                batch):
    last = _stopped_inside_epoch_1(tmp_path, LENET, step=2)
    steps = []
    result = run(replace(LENET, out_dir=str(tmp_path), resume=str(last), batch_size=batch),
                 after_step=lambda epoch, step: steps.append((epoch, step)))
    printed = capsys.readouterr().out
    assert (f"note: the checkpoint was written inside an epoch by a run with -b 4; the rest of "
            f"the epoch runs with -b {batch} (not bit-identical to an uninterrupted run)"
            in printed)
    # the 8 images epoch 1 had not reached (in one batch of 16, or four of 2), then whole
    # epochs of 16 images
    assert [step for epoch, step in steps if epoch == 0] == list(range(3, 3 + -(-8 // batch)))
    assert [step for epoch, step in steps if epoch == 1] == list(range(1, 1 + -(-16 // batch)))
    assert [row["epoch"] for row in result.history] == [1, 2, 3]


def test_a_mid_epoch_resume_on_less_data_or_other_process_counts_is_one_error_line(tmp_path,
                                                                                   capsys):
    last = _stopped_inside_epoch_1(tmp_path, LENET, step=3)
    argv = ["--synthetic", "--synthetic-size", "8", "-T", "3", "--width", "0.125", "-b", "4",
            "-j", "0", "--allow-silent", "--out-dir", str(tmp_path), "--resume", str(last)]
    with pytest.raises(SystemExit) as exit_info:
        main(mnist_LeNet.EXPERIMENT, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err == (
        f"error: checkpoint {last} was written after 12 images of epoch 1 per process, but this "
        f"run's training set gives each process 8; resume it with the same data (--data, "
        f"--train-subset, --synthetic-size)\n")

    two_ranks = torch.load(last, weights_only=True)
    two_ranks["ranks"] *= 2  # as if written by 2 processes under torchrun
    torch.save(two_ranks, tmp_path / "two_ranks.pth.tar")
    argv[argv.index("8")] = "16"
    argv[-1] = str(tmp_path / "two_ranks.pth.tar")
    with pytest.raises(SystemExit) as exit_info:
        main(mnist_LeNet.EXPERIMENT, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err == (
        f"error: checkpoint {tmp_path / 'two_ranks.pth.tar'} was written inside an epoch by 2 "
        f"process(es); resume it with as many (this run has 1)\n")


def test_continuing_into_a_new_out_dir_carries_the_history_into_csv_and_curves(tmp_path):
    first = tmp_path / "first"
    run(replace(LENET, out_dir=str(first), epochs=2))
    new = tmp_path / "new"
    result = run(replace(LENET, out_dir=str(new),
                         resume=str(first / "checkpointT1_mnist_lenet_synthetic.pth.tar")))
    with open(new / "metrics_mnist_lenet_synthetic.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert [float(row["test_loss"]) for row in rows] == [row["test_loss"]
                                                         for row in result.history]
    pytest.importorskip("matplotlib")
    from analysis import plots

    figure = plots.training_curves_figure(new / "metrics_mnist_lenet_synthetic.csv")
    train_loss = [line for line in figure.axes[0].get_lines() if line.get_label() == "train loss"]
    assert list(train_loss[0].get_xdata()) == [1, 2, 3]
    assert (new / "curves_mnist_lenet_synthetic.png").exists()
