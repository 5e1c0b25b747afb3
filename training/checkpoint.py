"""Checkpoints: the authors' layout (``epoch`` = epochs done, ``arch``, ``state_dict``,
``best_prec1``, ``optimizer``) plus what an exact resume needs (``scheduler``, ``settings``,
``history``, ``fired``, float16's ``scaler``; inside an epoch also ``step`` and per process
``ranks``: generator states, partial meters and spike counts; at an epoch's end the generators
are reseeded from the seed and epoch), all ``weights_only``-loadable and written atomically;
and a loader that also reads the authors' PyTorch 0.3 / Python 2 files.
"""
from __future__ import annotations

import importlib.util
import io
import os
import pickle
import random
import re
import sys
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from models import MODELS

from .experiment import Experiment, UsageError


def run_tag(settings: Experiment) -> str:
    """The script's tag, plus ``_synthetic`` for ``--synthetic``: a smoke test never overwrites
    a real run's checkpoints."""
    return f"{settings.tag}_synthetic" if settings.synthetic else settings.tag


def checkpoint_paths(out_dir: str, tag: str) -> tuple[str, str]:
    """``(<out_dir>/checkpointT1_<tag>.pth.tar, <out_dir>/model_bestT1_<tag>.pth.tar)``."""
    return (os.path.join(out_dir, f"checkpointT1_{tag}.pth.tar"),
            os.path.join(out_dir, f"model_bestT1_{tag}.pth.tar"))


def atomic_save(data: bytes, path: str) -> None:
    """Write ``data`` to ``path`` via a synced temporary file in the same directory and a rename,
    so ``path`` holds either the old or the new complete file, even after a crash."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".pth.tar")
    umask = os.umask(0)  # read by setting it, so set it back at once
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide checkpoints from the group
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


# torch's legacy (non-zip) files, the authors' included, begin with this pickled magic number
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"

# the script whose data set and network a checkpoint was trained for
SCRIPTS = {("mnist", "lenet"): "mnist_LeNet.py", ("cifar10", "vgg9"): "cifar10_VGG9.py",
           ("cifar10", "resnet11"): "cifar10_ResNet11.py", ("svhn", "resnet13"): "svhn_ResNet13.py"}


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
    state_dict (wrapped as ``{'state_dict': ...}``); anything else is a :class:`UsageError`."""
    if not path or not os.path.isfile(path):
        raise UsageError(f"no checkpoint found at {path!r}")
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
    script = next(s for (d, _), s in SCRIPTS.items() if d == saved_dataset)
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
