"""Checkpoints: what each holds, written and read here only; the authors' layout, read safely.

Every checkpoint holds the authors' keys ``epoch`` (complete epochs), ``arch``, ``state_dict``
(the bare network's weights), ``best_prec1`` and ``optimizer``, and for an exact resume
``scheduler`` (the learning-rate schedule and its position), ``settings`` (the run's
:class:`~training.experiment.Experiment`), ``history`` (every epoch's CSV row), ``fired`` (the
layers that have spiked, for the silence check) and, under float16 ``--amp``, ``scaler``. A
checkpoint written inside an epoch adds ``step`` (steps done in epoch ``epoch`` + 1) and
``ranks``: per process its generator states, partial metrics and spike counts. At an epoch's end
no generator state is saved: every epoch's draws are seeded from the seed and the epoch.
:class:`TrainingState` is what lives across epochs; :func:`checkpoint_contents` and
:func:`read_training_state` turn it into those keys and back. Files are written atomically and
read with ``weights_only=True``, this project's and the authors' PyTorch 0.3 / Python 2 files
alike; damaged bytes are found by the zip archive's checksums.
"""
from __future__ import annotations

import importlib.util
import io
import os
import pickle
import random
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from models import MODELS

from .experiment import Experiment, UsageError
from .files import atomic_save
from .loop import schedule_state


def run_tag(settings: Experiment) -> str:
    """The script's tag, plus ``_synthetic`` for ``--synthetic``: a smoke test never overwrites
    a real run's checkpoints."""
    return f"{settings.tag}_synthetic" if settings.synthetic else settings.tag


def checkpoint_paths(out_dir: str, tag: str) -> tuple[str, str]:
    """``(<out_dir>/checkpointT1_<tag>.pth.tar, <out_dir>/model_bestT1_<tag>.pth.tar)``."""
    return (os.path.join(out_dir, f"checkpointT1_{tag}.pth.tar"),
            os.path.join(out_dir, f"model_bestT1_{tag}.pth.tar"))


def save_checkpoint(state: Mapping[str, Any], is_best: bool, out_dir: str, tag: str) -> list[str]:
    """Save ``state`` as the latest checkpoint and, if ``is_best``, as the best; returns the
    paths written."""
    os.makedirs(out_dir, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    last, best = checkpoint_paths(out_dir, tag)
    written = [last, best] if is_best else [last]
    for path in written:
        atomic_save(buffer.getvalue(), path)
    return written


def capture_rng_state() -> dict[str, Any]:
    """Every generator the training loop draws from, in ``weights_only``-loadable types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (the CUDA part only where CUDA is in use)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])


@dataclass
class TrainingState:
    """What lives across epochs, and what a checkpoint gives back: ``epoch`` complete epochs,
    ``step`` steps done in the next one (0 at an epoch's end), the best test top-1 so far, every
    epoch's CSV row, the layers that have spiked in some epoch, and for a checkpoint inside an
    epoch each process's :func:`rank_state` (``ranks``, in rank order)."""

    epoch: int = 0
    step: int = 0
    best_prec1: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    fired: frozenset[str] = frozenset()
    ranks: list[dict[str, Any]] = field(default_factory=list)


def checkpoint_contents(state: TrainingState, settings: Experiment, model: nn.Module,
                        optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler) -> dict[str, Any]:
    """The checkpoint of ``state`` (the module docstring lists its keys); ``model`` is the bare
    network, so the weights carry the authors' key names."""
    contents = {"epoch": state.epoch, "arch": settings.arch, "state_dict": model.state_dict(),
                "best_prec1": state.best_prec1, "optimizer": optimizer.state_dict(),
                "scheduler": schedule_state(settings, state.epoch), "settings": asdict(settings),
                "history": state.history, "fired": sorted(state.fired)}
    if state.step:
        contents.update(step=state.step, ranks=state.ranks)
    if scaler.is_enabled():
        contents["scaler"] = scaler.state_dict()
    return contents


def rank_state(meters: list[float], spikes: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What one process saves inside an epoch: its generators' states, its partial metrics
    (:meth:`~training.metrics.EpochMeters.state`) and each layer's spike count so far."""
    return {"rng": capture_rng_state(), "meters": meters,
            "spikes": {name: int(count) for name, count in spikes.items()}}


def restore_rank(saved: Mapping[str, Any]) -> tuple[list[float], dict[str, int]]:
    """Set this process's generators from its :func:`rank_state`; return its partial metrics
    and spike counts."""
    restore_rng_state(saved["rng"])
    return list(saved["meters"]), dict(saved.get("spikes", {}))


# torch's legacy (non-zip) files, the authors' included, begin with this pickled magic number
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"

# the script whose data set and network a checkpoint was trained for
SCRIPTS = {("mnist", "lenet"): "mnist_LeNet.py", ("cifar10", "vgg9"): "cifar10_VGG9.py",
           ("cifar10", "resnet11"): "cifar10_ResNet11.py", ("svhn", "resnet13"): "svhn_ResNet13.py",
           ("fashion_mnist", "lenet"): "fashion_mnist_LeNet.py"}


def _unreadable(path: str, error: BaseException) -> str:
    """What the file at ``path`` is, ``torch.load`` having failed with ``error``."""
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if not head:
        return "the file is empty"
    if not head.startswith(b"PK") and head != _LEGACY_MAGIC:
        return "not a PyTorch checkpoint"
    named = re.search(r"GLOBAL ([\w.]+)", str(error))
    if isinstance(error, pickle.UnpicklingError) and named and _exists(named.group(1)):
        return (f"refused: loading it would run code ({named.group(1)}), it holds more than "
                "weights and numbers")
    return "the file is truncated or corrupt"


def _exists(name: str) -> bool:
    """Whether ``name`` (``module.attribute``) names something real, e.g. ``posix.system``,
    rather than a name cut short by a truncated file; nothing is imported to find out."""
    module, _, attribute = name.rpartition(".")
    if module in sys.modules:
        return hasattr(sys.modules[module], attribute)
    return importlib.util.find_spec(name.split(".")[0]) is not None


def _damaged_member(path: str) -> str | None:
    """The first member of a zip checkpoint (torch's format since 1.6) whose bytes fail their
    CRC-32, which ``torch.load`` does not verify; None if all pass, or if the file is not a
    readable zip archive (``torch.load`` then says what it is). Legacy files carry no
    checksums."""
    with open(path, "rb") as f:
        if f.read(2) != b"PK":
            return None
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        return None
    with archive:
        try:
            return archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):  # a damaged member header
            return "a member's header"


def _safe_load(path: str) -> Any:
    """``torch.load(weights_only=True)`` on the CPU; Python 2 byte strings decoded as latin1."""
    # torch warns about pickle protocols and, for Python 2 pickles (the authors' release), that
    # pickle arguments are ignored under weights_only, though it does apply the encoding
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except UnicodeDecodeError:
            return torch.load(path, map_location="cpu", weights_only=True, encoding="latin1")


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``) onto the CPU: this project's files, the
    authors' legacy Python 2 files, DataParallel's ``module.`` prefix (removed), a bare
    state_dict (wrapped as ``{'state_dict': ...}``); anything else, or a zip archive whose
    checksums fail, is a :class:`UsageError`."""
    if not path or not os.path.isfile(path):
        raise UsageError(f"no checkpoint found at {path!r}")
    damaged = _damaged_member(path)
    if damaged:
        raise UsageError(f"cannot read checkpoint {path}: the file is corrupt ({damaged} fails "
                         "its checksum)")
    try:
        checkpoint = _safe_load(path)
    except Exception as error:  # corrupt, truncated, foreign pickle, disallowed globals ...
        raise UsageError(f"cannot read checkpoint {path}: {_unreadable(path, error)}") from None
    if not isinstance(checkpoint, dict):
        raise UsageError(f"cannot read checkpoint {path}: it holds a {type(checkpoint).__name__}, "
                         "not a dict")
    if "state_dict" not in checkpoint:
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            checkpoint = {"state_dict": checkpoint}
        else:
            raise UsageError(f"cannot read checkpoint {path}: it has no 'state_dict' entry")
    weights = checkpoint["state_dict"]
    if weights and all(k.startswith("module.") for k in weights):
        weights = {k.removeprefix("module."): v for k, v in weights.items()}
    checkpoint["state_dict"] = dict(weights)
    return checkpoint


def _suggestion(saved_arch: str, saved_dataset: str | None, dataset: str | None) -> str:
    """What to run instead: ``-a ARCH`` on the same data set, else the script of the
    checkpoint's data set (with ``-a`` where that script builds another network)."""
    # the authors' files name no data set: their script's
    saved_dataset = saved_dataset or next((d for d, a in SCRIPTS if a == saved_arch), None)
    if dataset is None or saved_dataset in (None, dataset):
        return f"use -a {saved_arch}"
    if (saved_dataset, saved_arch) in SCRIPTS:
        return f"it fits {SCRIPTS[saved_dataset, saved_arch]}"
    script = next((s for (d, _), s in SCRIPTS.items() if d == saved_dataset), None)
    if script is None:  # a data set a script registered
        return f"it was trained on {saved_dataset} with -a {saved_arch}"
    return f"it fits {script} -a {saved_arch}"


def load_weights(model: nn.Module, checkpoint: Mapping[str, Any], arch: str, path: str,
                 dataset: str | None = None) -> None:
    """Load ``checkpoint['state_dict']`` into ``model`` (``arch``, for ``dataset``) strictly; a
    checkpoint of another known network (the message suggests what fits it) or with keys or
    shapes that do not fit is a one-line :class:`UsageError`."""
    saved_arch = str(checkpoint.get("arch", "")).lower()
    if saved_arch in MODELS and saved_arch != arch:
        settings = checkpoint.get("settings")
        saved_dataset = settings.get("dataset") if isinstance(settings, dict) else None
        raise UsageError(f"checkpoint {path} holds a {saved_arch} network, but this run builds "
                         f"{arch} ({_suggestion(saved_arch, saved_dataset, dataset)})")
    saved, expected = checkpoint["state_dict"], model.state_dict()
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    wrong = sorted(k for k in set(saved) & set(expected)
                   if tuple(saved[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        details = [f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                   for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        details += [f"{k} is {tuple(saved[k].shape)}, expected {tuple(expected[k].shape)}"
                    for k in wrong[:1]]
        raise UsageError(f"checkpoint {path} does not fit {arch} at this --width: "
                         f"{'; '.join(details)}")
    model.load_state_dict(saved, strict=True)


def read_training_state(checkpoint: Mapping[str, Any]) -> TrainingState:
    """Where ``checkpoint`` stands (the authors' files: their epoch and best top-1, no more)."""
    best = checkpoint.get("best_prec1")
    return TrainingState(epoch=int(checkpoint.get("epoch", 0)), step=int(checkpoint.get("step", 0)),
                         best_prec1=None if best is None else float(best),
                         history=list(checkpoint.get("history", [])),
                         fired=frozenset(checkpoint.get("fired", [])),
                         ranks=list(checkpoint.get("ranks", [])))


def describe_checkpoint(checkpoint: Mapping[str, Any]) -> str:
    """``epoch 22`` (22 complete epochs, the authors' wording), or ``inside epoch 23, after
    step 11`` for a checkpoint written inside an epoch."""
    epoch, step = checkpoint.get("epoch", "?"), checkpoint.get("step")
    return f"inside epoch {int(epoch) + 1}, after step {step}" if step else f"epoch {epoch}"


def restore_optimizer(checkpoint: Mapping[str, Any], optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler, settings: Experiment) -> None:
    """The optimiser's state (momentum buffers) and float16's grad scaler from ``checkpoint``;
    the command line's momentum and weight decay apply from here on."""
    try:
        if "optimizer" in checkpoint:
            optimizer.load_state_dict(checkpoint["optimizer"])
    except (ValueError, KeyError, TypeError) as error:
        raise UsageError(f"checkpoint {settings.resume}: optimizer state does not fit: "
                         f"{error}") from None
    for group in optimizer.param_groups:
        group.update(momentum=settings.momentum, weight_decay=settings.weight_decay)
    if scaler.is_enabled() and "scaler" in checkpoint:
        scaler.load_state_dict(checkpoint["scaler"])


def resume_notes(checkpoint: Mapping[str, Any], settings: Experiment) -> list[str]:
    """What differs between the run that wrote ``checkpoint`` and this one and matters: T; when
    training on, the learning-rate schedule (this run's applies) and, inside an epoch, the
    batch size (the epoch goes on over its remaining images in batches of this run's size)."""
    saved = checkpoint.get("settings") or {}
    notes = []
    if saved.get("time_steps") not in (None, settings.time_steps):
        notes.append(f"checkpoint was trained with T={saved['time_steps']}; this run uses "
                     f"T={settings.time_steps}")
    if settings.evaluate:
        return notes
    schedule, keys = checkpoint.get("scheduler"), ("base_lr", "milestones", "gamma")
    if schedule and any(schedule.get(k) != schedule_state(settings, 0)[k] for k in keys):
        notes.append(f"the checkpoint's learning-rate schedule "
                     f"({', '.join(f'{k} {schedule.get(k)}' for k in keys)}) differs from "
                     f"this run's; this run's applies")
    batch = saved.get("batch_size")
    if checkpoint.get("step") and settings.start_epoch is None and batch not in (
            None, settings.batch_size):
        notes.append(f"the checkpoint was written inside an epoch by a run with -b {batch}; the "
                     f"rest of the epoch runs with -b {settings.batch_size} (not bit-identical "
                     f"to an uninterrupted run)")
    return notes
