"""Checkpoints: atomic writes, ``weights_only`` loading of ours and of the authors' legacy Python 2
files, and the one-line errors for missing, unreadable and mismatched checkpoints."""
from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

import models
from training import UsageError
from training.checkpoint import (atomic_save, capture_rng_state, checkpoint_paths, load_checkpoint,
                                 load_weights, restore_rng_state, save_checkpoint)

try:
    from tests.legacy import authors_checkpoint, save_py2_legacy
except ImportError:  # pragma: no cover
    from legacy import authors_checkpoint, save_py2_legacy


def _tiny(arch: str = "lenet", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    shape = (1, 28, 28) if arch == "lenet" else (3, 32, 32)
    return models.get_model(arch, width=0.125, input_shape=shape)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_authors_py2_legacy_checkpoint_loads_weights_only(tmp_path, prefix):
    model = _tiny()
    path = str(tmp_path / "model_bestT1_mnist_lenet.pth.tar")
    save_py2_legacy(authors_checkpoint(model, "lenet", prefix), path)
    with open(path, "rb") as f:
        raw = f.read()
    assert not raw.startswith(b"PK")  # legacy serialisation, not a zip archive
    assert b"_rebuild_tensor\n" in raw and b"_rebuild_tensor_v2" not in raw  # 0.3's tensors
    with pytest.raises(UnicodeDecodeError):  # a plain load fails on the Python 2 bytes ...
        torch.load(path, weights_only=True)

    checkpoint = load_checkpoint(path)  # ... ours decodes them
    assert checkpoint["epoch"] == 125 and checkpoint["best_prec1"] == pytest.approx(99.59)
    assert checkpoint["note"] == "entra\xeenement"
    assert list(checkpoint["state_dict"]) == list(model.state_dict())  # prefix removed
    fresh = _tiny(seed=1)
    load_weights(fresh, checkpoint, "lenet", path)
    assert _same_weights(fresh, model)
    optimizer = torch.optim.SGD(fresh.parameters(), lr=1.0)
    optimizer.load_state_dict(checkpoint["optimizer"])  # their optimizer entry is usable too
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0017)


def test_our_checkpoint_roundtrip_and_best_copy(tmp_path):
    model = _tiny()
    state = {"epoch": 3, "arch": "lenet", "state_dict": model.state_dict(), "best_prec1": 42.0,
             "optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(),
             "rng": capture_rng_state(), "settings": {"milestones": (1, 2), "mean": None}}
    written = save_checkpoint(state, True, str(tmp_path / "out"), "mnist_lenet")
    last, best = checkpoint_paths(str(tmp_path / "out"), "mnist_lenet")
    assert written == [last, best]
    assert os.path.basename(last) == "checkpointT1_mnist_lenet.pth.tar"
    assert os.path.basename(best) == "model_bestT1_mnist_lenet.pth.tar"
    loaded = load_checkpoint(best)
    assert loaded["epoch"] == 3 and loaded["settings"]["milestones"] == (1, 2)
    assert save_checkpoint(state, False, str(tmp_path / "out"), "mnist_lenet") == [last]
    assert sorted(os.listdir(tmp_path / "out")) == sorted(map(os.path.basename, (last, best)))


def test_rng_state_roundtrip_through_a_checkpoint(tmp_path):
    import random

    import numpy as np

    save_checkpoint({"state_dict": {}, "rng": capture_rng_state()}, False, str(tmp_path), "t")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_state(load_checkpoint(checkpoint_paths(str(tmp_path), "t")[0])["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpointT1_x.pth.tar")
    atomic_save(b"complete old checkpoint", path)

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_save(b"half a new one", path)
    with open(path, "rb") as f:
        assert f.read() == b"complete old checkpoint"
    assert os.listdir(tmp_path) == ["checkpointT1_x.pth.tar"]  # no temporary left behind


def test_missing_and_unreadable_checkpoints_raise_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no checkpoint found at"):
        load_checkpoint(str(tmp_path / "nope.pth.tar"))
    with pytest.raises(UsageError, match="no checkpoint found at"):
        load_checkpoint(str(tmp_path))  # a directory
    garbage = tmp_path / "garbage.pth.tar"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(UsageError, match="cannot read checkpoint"):
        load_checkpoint(str(garbage))
    truncated = tmp_path / "truncated.pth.tar"
    save_checkpoint({"state_dict": _tiny().state_dict()}, False, str(tmp_path), "full")
    truncated.write_bytes((tmp_path / "checkpointT1_full.pth.tar").read_bytes()[:200])
    with pytest.raises(UsageError, match="cannot read checkpoint"):
        load_checkpoint(str(truncated))


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "payload": os.getcwd}, path)  # a global weights_only refuses
    with pytest.raises(UsageError, match="cannot read checkpoint"):
        load_checkpoint(str(path))


def test_bare_state_dict_is_accepted(tmp_path):
    model = _tiny()
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    fresh = _tiny(seed=1)
    load_weights(fresh, load_checkpoint(str(path)), "lenet", str(path))
    assert _same_weights(fresh, model)


def test_wrong_architecture_is_a_one_line_error(tmp_path):
    path = str(tmp_path / "vgg.pth.tar")
    save_checkpoint({"arch": "vgg9", "state_dict": _tiny("vgg9").state_dict()}, False,
                    str(tmp_path), "vgg")
    vgg = load_checkpoint(checkpoint_paths(str(tmp_path), "vgg")[0])
    with pytest.raises(UsageError, match=r"holds a vgg9 network.*use -a vgg9"):
        load_weights(_tiny("resnet11"), vgg, "resnet11", path)

    vgg.pop("arch")  # the authors' files may not say; the weights then decide
    with pytest.raises(UsageError, match="does not fit resnet11") as error:
        load_weights(_tiny("resnet11"), vgg, "resnet11", path)
    assert "\n" not in str(error.value)

    wide = models.get_model("lenet", width=0.25)
    with pytest.raises(UsageError, match=r"cnn1.weight is \(5, 1, 5, 5\), expected \(2, 1, 5, 5\)"):
        load_weights(_tiny(), {"state_dict": wide.state_dict()}, "lenet", path)


def test_each_unreadable_file_gets_one_line_saying_what_it_is(tmp_path, recwarn):
    import pickle

    files = {"empty": b"", "text": b"epoch,lr\n1,0.1\n",
             "plain": pickle.dumps({"state_dict": {}}, protocol=4)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    save_checkpoint({"state_dict": _tiny().state_dict()}, False, str(tmp_path), "full")
    whole = (tmp_path / "checkpointT1_full.pth.tar").read_bytes()
    (tmp_path / "truncated").write_bytes(whole[:len(whole) // 2])
    torch.save({"state_dict": _tiny().state_dict()}, tmp_path / "legacy",
               _use_new_zipfile_serialization=False)
    legacy = (tmp_path / "legacy").read_bytes()
    (tmp_path / "legacy_truncated").write_bytes(legacy[:len(legacy) // 2])
    torch.save({"state_dict": {}, "payload": os.getcwd}, tmp_path / "code")
    expected = {"empty": "the file is empty", "text": "not a PyTorch checkpoint",
                "plain": "not a PyTorch checkpoint", "truncated": "the file is truncated or corrupt",
                "legacy_truncated": "the file is truncated or corrupt",
                "code": "refused: loading it would run code (posix.getcwd), it holds more than "
                        "weights and numbers"}
    for name, what in expected.items():
        with pytest.raises(UsageError) as error:
            load_checkpoint(str(tmp_path / name))
        assert str(error.value) == f"cannot read checkpoint {tmp_path / name}: {what}"
    assert not recwarn.list  # no pickle-protocol warning, no weights_only advice


@pytest.mark.parametrize("saved, this, dataset, hint", [
    ("lenet", "vgg9", "cifar10", "it fits mnist_LeNet.py"),
    ("resnet11", "lenet", "mnist", "it fits cifar10_ResNet11.py"),
    ("vgg9", "resnet11", "cifar10", "use -a vgg9"),
])
def test_architecture_mismatch_suggests_what_fits(saved, this, dataset, hint):
    checkpoint = {"arch": saved, "state_dict": {}}
    with pytest.raises(UsageError, match=f"holds a {saved} network, but this run builds {this} "
                                         rf"\({hint}\)$"):
        load_weights(_tiny(this), checkpoint, this, "x.pth.tar", dataset)
    checkpoint["settings"] = {"dataset": "svhn"}  # trained with -a under another script
    with pytest.raises(UsageError, match=r"\(it fits svhn_ResNet13.py -a lenet\)$" if saved ==
                       "lenet" else "svhn_ResNet13.py"):
        load_weights(_tiny(this), checkpoint, this, "x.pth.tar", dataset)


def test_training_state_roundtrip_and_what_each_kind_of_checkpoint_holds(tmp_path):
    from training import Experiment
    from training.checkpoint import (TrainingState, checkpoint_contents, describe_checkpoint,
                                     rank_state, read_training_state, restore_rank)

    settings = Experiment(tag="t", dataset="mnist", arch="lenet", width=0.125)
    model = _tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    history = [{"epoch": 1, "test_top1": 50.0}, {"epoch": 2, "test_top1": 60.0}]
    at_end = TrainingState(epoch=2, best_prec1=60.0, history=history, fired=frozenset({"lif1"}))
    inside = TrainingState(epoch=2, step=7, best_prec1=60.0, history=history,
                           fired=frozenset({"lif1"}),
                           ranks=[rank_state([1.0, 2.0, 3.0, 4.0, 28.0, 9.5],
                                             {"lif1": torch.tensor(5)})])
    expected = torch.rand(3)  # drawn from the generator state rank_state captured
    authors = {"epoch", "arch", "state_dict", "best_prec1", "optimizer"}
    ours = {"scheduler", "settings", "history", "fired"}
    for state, extra in ((at_end, set()), (inside, {"step", "ranks"})):
        contents = checkpoint_contents(state, settings, model, optimizer, scaler)
        assert set(contents) == authors | ours | extra  # generator states only inside an epoch
        save_checkpoint(contents, False, str(tmp_path), "t")
        loaded = load_checkpoint(checkpoint_paths(str(tmp_path), "t")[0])
        read = read_training_state(loaded)
        assert replace(read, ranks=[]) == replace(state, ranks=[])
        assert len(read.ranks) == len(state.ranks)
    assert describe_checkpoint(loaded) == "inside epoch 3, after step 7"
    assert describe_checkpoint({"epoch": 2}) == "epoch 2"
    meters, spikes = restore_rank(loaded["ranks"][0])
    assert meters == [1.0, 2.0, 3.0, 4.0, 28.0, 9.5] and spikes == {"lif1": 5}
    assert torch.equal(torch.rand(3), expected)
