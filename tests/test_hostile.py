"""Hostile and broken input through the scripts' ``main``: each ends with one line
``error: ...`` on stderr, exit status 2, and the previous run's checkpoint byte-identical.

Covered: truncated and random-bytes checkpoints, a pickle that would run code (refused by
weights_only loading; the payload is shown to be real and shown not to have run), a checkpoint of
another architecture or class count, missing data offline, images of the wrong shape, a loss
that becomes NaN/infinite, and a full disk or read-only file system at save time (simulated by
making the write raise ENOSPC/EROFS: the tests run as root, where chmod stops nothing).
"""
from __future__ import annotations

import errno
import os
import re
import sys
from pathlib import Path

import pytest
import torch

import models
import training.checkpoint
import training.engine
from training import main
from training.data import DATASETS, synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import mnist_LeNet  # noqa: E402

TINY = ["--synthetic", "--synthetic-size", "16", "-T", "2", "--width", "0.125", "-b", "8",
        "--test-batch-size", "8", "-j", "0", "-p", "1000"]
TAG = "mnist_lenet_synthetic"



@pytest.fixture
def previous(tmp_path, capsys) -> tuple[Path, dict[str, bytes]]:
    """An out-dir holding one good epoch; returns it and its files' bytes."""
    out = tmp_path / "out"
    main(mnist_LeNet.EXPERIMENT, [*TINY, "--epochs", "1", "--out-dir", str(out)])
    capsys.readouterr()
    return out, _snapshot(out)


def _snapshot(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in os.listdir(out)
            if name.endswith(".pth.tar")}


def _fails(argv: list[str], capsys, pattern: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(mnist_LeNet.EXPERIMENT, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error: ") and re.search(pattern, err), err
    return err


def _resume_args(out: Path, checkpoint: Path, *extra: str) -> list[str]:
    return [*TINY, "--epochs", "2", "--out-dir", str(out), "--resume", str(checkpoint), *extra]


def _flip_middle(data: bytes, count: int = 400) -> bytes:
    """``data`` with ``count`` bytes in the middle inverted (inside the weights' storage)."""
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + count]) + \
        data[middle + count:]


@pytest.mark.parametrize("damage, pattern", [
    ("truncated", "the file is truncated or corrupt"), ("random", "not a PyTorch checkpoint"),
    ("flipped", r"the file is corrupt \(archive/data/\d+ fails its checksum\)")])
def test_damaged_checkpoint(previous, tmp_path, capsys, damage, pattern):
    out, before = previous
    good = (out / f"checkpointT1_{TAG}.pth.tar").read_bytes()
    bad = tmp_path / "bad.pth.tar"
    damaged = {"truncated": lambda: good[:len(good) // 2], "flipped": lambda: _flip_middle(good),
               "random": lambda: torch.randint(0, 256, (4096,), dtype=torch.uint8,
                                               generator=torch.Generator().manual_seed(0))
               .numpy().tobytes()}
    bad.write_bytes(damaged[damage]())
    _fails(_resume_args(out, bad), capsys, f"cannot read checkpoint .*bad.pth.tar: {pattern}")
    assert _snapshot(out) == before


def test_bytes_flipped_inside_the_shipped_model_are_found(tmp_path, capsys):
    shipped = REPO / "pretrained" / "model_bestT1_mnist_lenet.pth.tar"
    bad = tmp_path / "model_bestT1_mnist_lenet.pth.tar"
    bad.write_bytes(_flip_middle(shipped.read_bytes()))
    _fails(["--resume", str(bad), "--evaluate", "--synthetic", "-T", "2"], capsys,
           rf"^error: cannot read checkpoint {bad}: the file is corrupt \(archive/data/2 fails its "
           r"checksum\)$")


@pytest.mark.parametrize("evaluate", [True, False], ids=["evaluate-stats", "train"])
def test_an_out_dir_that_cannot_be_written_is_refused_before_any_work(previous, tmp_path, capsys,
                                                                      monkeypatch, evaluate):
    out, _ = previous
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")

    def no_work(*args, **kwargs):
        raise AssertionError("the data was loaded before the out-dir was checked")

    monkeypatch.setattr(training.engine, "build_datasets", no_work)
    extra = (["--resume", str(out / f"checkpointT1_{TAG}.pth.tar"), "--evaluate", "--stats"]
             if evaluate else [])
    _fails([*TINY, "--out-dir", str(blocked / "runs"), *extra], capsys,
           rf"^error: cannot write to --out-dir {blocked / 'runs'}: Not a directory$")


def test_a_previous_runs_files_are_named_with_only_a_checkpoint_that_exists(previous, capsys):
    out, _ = previous
    for name in (f"checkpointT1_{TAG}.pth.tar", f"model_bestT1_{TAG}.pth.tar"):
        (out / name).unlink()
    _fails([*TINY, "--out-dir", str(out)], capsys,
           rf"^error: {out} holds a previous run's metrics_{TAG}.csv; start over with "
           r"--overwrite$")


class _Payload:
    """Unpickling this calls os.system (the classic malicious-checkpoint trick)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_runs_code_is_refused_and_does_not_run(previous, tmp_path, capsys):
    out, before = previous
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "epoch": _Payload(marker)}, evil)
    _fails(_resume_args(out, evil), capsys, "cannot read checkpoint .*evil.pth.tar")
    assert not marker.exists()  # weights_only refused before anything ran
    assert _snapshot(out) == before
    # the payload is real: an unsafe load would have run it
    torch.load(evil, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("arch, classes, pattern", [
    ("vgg9", 10, "holds a vgg9 network, but this run builds lenet"),
    ("lenet", 100, r"does not fit lenet at this --width: fc1.weight is \(100, 25\), expected "
                   r"\(10, 25\)"),
])
def test_checkpoint_of_another_network(previous, tmp_path, capsys, arch, classes, pattern):
    out, before = previous
    shape = (3, 32, 32) if arch == "vgg9" else (1, 28, 28)
    other = models.get_model(arch, num_classes=classes, width=0.125, input_shape=shape)
    path = tmp_path / "other.pth.tar"
    torch.save({"arch": arch, "epoch": 1, "state_dict": other.state_dict()}, path)
    _fails(_resume_args(out, path), capsys, pattern)
    assert _snapshot(out) == before


def test_missing_data_offline(previous, tmp_path, capsys):
    out, before = previous
    _fails(["--data", str(tmp_path / "nowhere"), "--no-download", "--epochs", "2",
            "--out-dir", str(out)], capsys, r"mnist data not found in .*nowhere")
    assert _snapshot(out) == before


def test_images_of_the_wrong_shape(previous, capsys, monkeypatch):
    out, before = previous

    def cifar_sized(settings, train=True):  # e.g. a --data directory holding colour images
        info = DATASETS["cifar10"]
        return (synthetic_dataset(info, 16, 1, True) if train else None,
                synthetic_dataset(info, 10, 1, False))

    monkeypatch.setattr(training.engine, "build_datasets", cifar_sized)
    _fails([*TINY, "--epochs", "2", "--out-dir", str(out), "--overwrite"], capsys,
           r"test images have shape \(3, 32, 32\) \(C, H, W\), but lenet expects \(1, 28, 28\)")
    assert _snapshot(out) == before


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(previous, capsys):
    out, before = previous
    last = out / f"checkpointT1_{TAG}.pth.tar"
    _fails(_resume_args(out, last, "--lr", "1e30"), capsys,
           rf"loss became (nan|inf) at epoch 2, step \d+; last good checkpoint kept: {last}")
    assert _snapshot(out) == before


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["disk-full", "read-only"])
def test_unwritable_out_dir_at_save_time(previous, capsys, monkeypatch, code):
    out, before = previous

    def refuse(data: bytes, path: str) -> None:
        raise OSError(code, os.strerror(code), path)

    monkeypatch.setattr(training.checkpoint, "atomic_save", refuse)
    _fails(_resume_args(out, out / f"checkpointT1_{TAG}.pth.tar"), capsys,
           rf"cannot write checkpoint to {out}: {os.strerror(code)}; the previous checkpoint "
           "is kept")
    assert _snapshot(out) == before
