"""The engine in-process: metrics, schedule, parser limits, synthetic data, evaluation with a
monitor, and resuming at the right epoch and learning rate (exactly, at an epoch boundary)."""
from __future__ import annotations

import csv
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from spiking import PoissonEncoder
from training import Experiment, UsageError, run
from training.checkpoint import load_checkpoint
from training.data import DATASETS, build_datasets, make_loader
from training.synthetic import synthetic_dataset
from training.engine import build_model
from training.experiment import parse_settings
from training.loop import evaluate, learning_rate, spike_loss
from training.metrics import AverageMeter, EpochProgress, accuracy, format_epoch_table

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import mnist_LeNet  # noqa: E402

# Four steps are too few for every layer to fire on the realistic-density stand-in, so a layer
# may fall silent; these tests are about the engine, so that only warns (tests/test_interrupt.py
# tests the stop).
TINY = Experiment(tag="tiny", dataset="mnist", arch="lenet", time_steps=4, input_scale=0.5,
                  width=0.125, lr=0.0085, epochs=1, batch_size=8, test_batch_size=16,
                  synthetic=True, synthetic_size=32, print_freq=1000, workers=0, seed=5,
                  allow_silent=True)



def test_accuracy_topk_and_average_meter():
    output = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5], [0.5, 0.2, 0.3]])
    target = torch.tensor([1, 1, 0, 2])
    top1, top2, top5 = accuracy(output, target, (1, 2, 5))
    assert (top1, top2, top5) == (25.0, 75.0, 100.0)  # k above the class count means all
    meter = AverageMeter("acc")
    meter.update(50.0, 2)
    meter.update(100.0, 6)
    assert meter.avg == pytest.approx(87.5) and meter.count == 8


def test_spike_loss_is_summed_squared_error_to_onehot():
    output = torch.tensor([[0.5, 0.0], [0.25, 0.75]])
    assert spike_loss(output, torch.tensor([0, 1])).item() == pytest.approx(0.25 + 0.0625 + 0.0625)


def test_learning_rate_schedule_is_cumulative_step_decay():
    rates = [learning_rate(e, 0.0033, (70, 100, 125), 0.2) for e in (0, 69, 70, 99, 100, 125, 149)]
    expected = [0.0033, 0.0033, 0.00066, 0.00066, 0.000132, 0.0000264, 0.0000264]
    assert rates == pytest.approx(expected)


@pytest.mark.parametrize("argv, message", [
    (["-T", "0"], "time steps must be at least 1"),
    (["--leak", "0"], "leak must be in (0, 1]"),
    (["--leak", "1.5"], "leak must be in (0, 1]"),
    (["--leak", "nan"], "leak must be in (0, 1]"),
    (["-b", "0"], "batch size must be at least 1"),
    (["--test-batch-size", "-3"], "test batch size must be at least 1"),
    (["-a", "alexnet"], "invalid choice: 'alexnet'"),
    (["--epochs", "0"], "epochs must be at least 1"),
    (["--lr", "-1"], "learning rate must be positive"),
    (["--seed", "-1"], "seed must be at least 0"),
    (["--device", "tpu"], "unknown device 'tpu'"),
])
def test_parser_rejects_invalid_values(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_settings(mnist_LeNet.EXPERIMENT, argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_parser_maps_the_authors_flags():
    s = parse_settings(mnist_LeNet.EXPERIMENT, [
        "-a", "LeNet", "-j", "0", "--epochs", "3", "--start-epoch", "1", "-b", "32", "--lr", "0.01",
        "--momentum", "0.9", "--wd", "1e-4", "-p", "5", "--resume", "x.pth.tar", "-e", "-T", "20",
        "--leak", "1", "--data", "d", "--device", "cpu", "--seed", "7", "--out-dir", "o",
        "--synthetic", "--width", "0.5"])
    assert (s.arch, s.workers, s.epochs, s.start_epoch, s.batch_size, s.lr, s.momentum) == \
        ("lenet", 0, 3, 1, 32, 0.01, 0.9)
    assert (s.weight_decay, s.print_freq, s.resume, s.evaluate, s.time_steps, s.leak) == \
        (1e-4, 5, "x.pth.tar", True, 20, 1.0)
    assert (s.data_dir, s.device, s.seed, s.out_dir, s.synthetic, s.width) == \
        ("d", "cpu", 7, "o", True, 0.5)
    assert s.tag == "mnist_lenet" and s.lr_gamma == 0.2 and s.milestones == (75,)
    defaults = parse_settings(mnist_LeNet.EXPERIMENT, [])
    assert defaults == mnist_LeNet.EXPERIMENT and defaults.momentum == 0.0
    assert parse_settings(mnist_LeNet.EXPERIMENT, ["-a", "vgg9"]).tag == "mnist_vgg9"


def test_synthetic_data_is_deterministic_and_shaped_like_the_real_sets():
    for name, info in DATASETS.items():
        a = synthetic_dataset(info, 400, seed=3, train=True)
        b = synthetic_dataset(info, 400, seed=3, train=True)
        images, labels = a.tensors
        assert images.shape == (400, *info.input_shape) and images.dtype == torch.float32
        assert torch.equal(images, b.tensors[0]) and torch.equal(labels, b.tensors[1])
        assert sorted(labels.unique().tolist()) == list(range(info.num_classes))
        assert images.min() >= 0.0 and images.max() <= 1.0
        # the real set's pixel statistics, so the networks see as many input spikes
        mean, std = images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3))
        assert torch.allclose(mean, torch.tensor(info.pixel_mean), atol=0.03), (name, mean)
        assert torch.allclose(std, torch.tensor(info.pixel_std), atol=0.04), (name, std)
        lit = (images > 0).float().mean()
        assert abs(lit - info.density) < 0.05, (name, lit)  # MNIST: 19 % lit
        test = synthetic_dataset(info, 100, seed=3, train=False).tensors[0]
        assert not torch.equal(test[:10], images[:10])
    seed_3, seed_4 = (synthetic_dataset(DATASETS["mnist"], 40, seed=seed, train=True).tensors[0]
                      for seed in (3, 4))
    assert not torch.equal(seed_3, seed_4)


def test_synthetic_data_is_normalised_like_the_real_sets():
    info = DATASETS["cifar10"]
    mean, std = (0.4914, 0.4822, 0.4465), (0.557, 0.549, 0.5534)
    raw = synthetic_dataset(info, 40, seed=3, train=True).tensors[0]
    normalised = synthetic_dataset(info, 40, seed=3, train=True, mean=mean, std=std).tensors[0]
    expected = (raw - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(normalised, expected)


def test_train_subset_is_a_fixed_draw(tmp_path):
    settings = replace(TINY, train_subset=10)
    train_a, test = build_datasets(settings)
    train_b, _ = build_datasets(settings)
    assert len(train_a) == 10 and len(test) == 10  # the test set stays whole
    assert train_a.indices == train_b.indices


def test_missing_data_offline_names_the_files(tmp_path):
    settings = replace(TINY, synthetic=False, download=False, data_dir=str(tmp_path))
    with pytest.raises(UsageError) as error:
        build_datasets(settings)
    message = str(error.value)
    assert "\n" not in message
    assert "MNIST/raw/train-images-idx3-ubyte" in message and str(tmp_path) in message


class _SignalDispositions(torch.utils.data.Dataset):
    """Each item: whether the process that loads it ignores SIGINT and SIGTERM."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        import signal

        return torch.tensor([signal.getsignal(s) is signal.SIG_IGN
                             for s in (signal.SIGINT, signal.SIGTERM)])


def test_data_loading_workers_leave_signals_to_the_main_process():
    # Ctrl-C and SLURM signal the whole process group: a worker killed by one would make
    # PyTorch raise in the main process in the middle of the step the engine lets finish
    loader = make_loader(_SignalDispositions(), 2, 1, torch.device("cpu"), torch.Generator(),
                         range(4))
    assert all(bool(batch.all()) for batch in loader)


def test_evaluate_calls_the_monitor_and_is_reproducible():
    settings = TINY
    model = build_model(settings)
    _, test_set = build_datasets(settings, train=False)
    loader = torch.utils.data.DataLoader(test_set, batch_size=4)

    class Monitor:
        def __init__(self):
            self.calls = []

        def attach(self, model):
            self.calls.append("attach")

        def observe(self, output, target):
            assert output.shape == (target.shape[0], 10)
            self.calls.append("observe")

        def detach(self):
            self.calls.append("detach")

    monitor = Monitor()
    encoder = PoissonEncoder(4, 0.5, torch.Generator().manual_seed(0))
    first = evaluate(model, encoder, loader, torch.device("cpu"), monitor=monitor)
    assert monitor.calls == ["attach", *["observe"] * 3, "detach"]
    assert first.samples == 10 and not model.training
    encoder.generator.manual_seed(0)
    second = evaluate(model, encoder, loader, torch.device("cpu"))
    assert (first.loss, first.top1, first.top5) == (second.loss, second.top1, second.top5)


def test_progress_writes_plain_lines_when_not_a_terminal(capsys):
    progress = EpochProgress(5, "Epoch 1/1", print_freq=2)
    for _ in range(5):
        progress.update(8, 0.5, 50.0)
    progress.close()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("]")[0] for line in lines] == ["Epoch 1/1 [2/5", "Epoch 1/1 [4/5",
                                                       "Epoch 1/1 [5/5"]
    assert all("samples/s" in line and "Prec@1" in line for line in lines)
    table = format_epoch_table([{"epoch": 1, "lr": 0.0085, "test_top1": 98.5}, {"epoch": 12}])
    header, rule, first, second = table.splitlines()
    assert header.startswith("epoch |     lr | train loss |") and rule.startswith("------+---")
    assert first.split(" | ")[:2] == ["    1", "0.0085"] and first.split(" | ")[5] == "     98.50"
    assert second.split(" | ")[:2] == ["   12", "      "]  # a value the history lacks stays empty


def test_progress_of_a_resumed_epoch_averages_over_the_whole_epoch(capsys):
    from training.metrics import EpochMeters

    # 8 images done before the interruption: loss 0.5 and top-1 50 % per image, 2 s
    resumed = EpochMeters([0.5 * 8, 2.3 * 8, 50.0 * 8, 90.0 * 8, 8, 2.0])
    progress = EpochProgress(4, "Epoch 1/1", print_freq=4, done=2, meters=resumed)
    progress.update(8, 0.1, 100.0)
    progress.update(8, 0.1, 100.0)
    line = capsys.readouterr().out.strip()
    assert line.startswith("Epoch 1/1 [4/4]  Loss 0.1000 (0.2333)  Prec@1 100.00 ( 83.33)")
    assert float(line.split()[-2]) <= 24 / 2.0  # 24 images in the 2 s before and a moment


def test_evaluate_without_resume_is_refused():
    with pytest.raises(UsageError, match="--evaluate needs a checkpoint"):
        run(replace(TINY, evaluate=True))


def _weights(path: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def test_resume_continues_at_the_right_epoch_and_rate_exactly(tmp_path):
    settings = replace(TINY, milestones=(1,), epochs=2)
    straight = run(replace(settings, out_dir=str(tmp_path / "straight")))

    out = str(tmp_path / "resumed")
    first = run(replace(settings, out_dir=out, epochs=1))
    assert [row["epoch"] for row in first.history] == [1]
    checkpoint = load_checkpoint(os.path.join(out, "checkpointT1_tiny_synthetic.pth.tar"))
    assert checkpoint["epoch"] == 1 and checkpoint["scheduler"]["next_lr"] == pytest.approx(0.0017)
    assert checkpoint["settings"]["time_steps"] == 4 and "ranks" not in checkpoint

    resumed = run(replace(settings, out_dir=out,
                          resume=os.path.join(out, "checkpointT1_tiny_synthetic.pth.tar")))
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    assert [row["lr"] for row in resumed.history] == pytest.approx([0.0085, 0.0017])
    with open(os.path.join(out, "metrics_tiny_synthetic.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[1]["lr"]) == pytest.approx(0.0017)

    a = _weights(os.path.join(tmp_path / "straight", "checkpointT1_tiny_synthetic.pth.tar"))
    b = _weights(os.path.join(out, "checkpointT1_tiny_synthetic.pth.tar"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # same data order, spikes and updates
    assert resumed.history[1]["test_top1"] == straight.history[1]["test_top1"]


def test_resume_of_a_finished_run_trains_nothing(tmp_path, capsys):
    first = run(replace(TINY, out_dir=str(tmp_path)))
    again = run(replace(TINY, out_dir=str(tmp_path),
                        resume=str(tmp_path / "checkpointT1_tiny_synthetic.pth.tar")))
    assert "nothing to train" in capsys.readouterr().out
    assert again.best_prec1 == first.best_prec1


def test_train_subset_larger_than_the_set_is_an_error():
    with pytest.raises(UsageError, match=r"^--train-subset 33 is larger than the training set "
                                         r"\(32 images\)$"):
        run(replace(TINY, train_subset=33))


def test_failed_offline_run_leaves_no_empty_data_directory(tmp_path):
    data = tmp_path / "data"
    with pytest.raises(UsageError, match="mnist data not found"):
        run(replace(TINY, synthetic=False, download=False, data_dir=str(data),
                    out_dir=str(tmp_path / "out")))
    assert not data.exists()
    kept = tmp_path / "kept"
    (kept / "MNIST").mkdir(parents=True)  # a directory the user made stays
    with pytest.raises(UsageError, match="mnist data not found"):
        run(replace(TINY, synthetic=False, download=False, data_dir=str(kept),
                    out_dir=str(tmp_path / "out")))
    assert (kept / "MNIST").is_dir()


def test_what_a_run_prints_and_writes(tmp_path, capsys):
    run(replace(TINY, out_dir=str(tmp_path), epochs=2))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("tiny_synthetic: lenet on synthetic mnist (32 train / 10 test)")
    assert "seed 5, device cpu, float32, TF32 off, spiking backend " in lines[0]
    assert "float32" not in lines[1:]  # the precision is part of the header, not a line of its own
    assert not [line for line in lines if "Prec@5" in line]  # the summary line says it once
    summaries = [line for line in lines if line.startswith("Epoch 2/2 | lr")]
    assert len(summaries) == 1 and " top-5 " in summaries[0]
    csv_path = tmp_path / "metrics_tiny_synthetic.csv"
    assert lines[-2] == (f"best test top-1 {float(summaries[0].rsplit(' ', 1)[1][:-1]):.2f}%; "
                         f"checkpoints {tmp_path}/checkpointT1_tiny_synthetic.pth.tar and "
                         f"{tmp_path}/model_bestT1_tiny_synthetic.pth.tar; metrics {csv_path}")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for value in row.values():
            digits = value.lstrip("-").replace(".", "").split("e")[0].lstrip("0")
            assert len(digits) <= 6, value  # e.g. 10.0, not 10.000000029802322


@pytest.mark.parametrize("arch, dataset", [("lenet", "mnist"), ("vgg9", "cifar10"),
                                           ("resnet11", "cifar10"), ("resnet13", "svhn")])
def test_the_dropout_setting_reaches_every_dropout_module(arch, dataset, capsys):
    from spiking.dropout import TimeHeldDropout

    model = build_model(replace(TINY, arch=arch, dataset=dataset, dropout=0.1))
    rates = {module.p for module in model.modules() if isinstance(module, TimeHeldDropout)}
    assert rates == {0.1}  # LeNet too: above 0 it adds the dropout the paper's LeNet has not
    assert "no dropout" not in capsys.readouterr().out


def test_utils_gathers_the_engine_parts_under_the_authors_names():
    import utils

    assert utils.validate is utils.evaluate and utils.AverageMeter is AverageMeter
    assert all(hasattr(utils, name) for name in utils.__all__)
