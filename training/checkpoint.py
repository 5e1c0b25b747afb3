"""Checkpoints: the authors' layout plus what an exact resume needs, written atomically, and a
loader that also reads the authors' released PyTorch 0.3 / Python 2 files (SPEC section 10).

Layout written here (all ``weights_only``-loadable)::

    epoch        completed epochs = 0-based index of the next epoch (pytorch/examples convention)
    arch         network name, e.g. "resnet11"
    state_dict   model weights under the authors' names
    best_prec1   best test top-1 so far (percent)
    optimizer    optimizer.state_dict()
    scheduler    learning-rate schedule and its position (training.optim.schedule_state)
    rng          Python, NumPy, torch CPU and CUDA generator states at the end of the epoch
    settings     the run's Experiment as a dict
    history      one dict per finished epoch (the CSV rows)
"""
from __future__ import annotations

import io
import os
import random
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from models import MODELS

from .errors import UsageError
from .experiment import Experiment

__all__ = ["atomic_save", "capture_rng_state", "checkpoint_paths", "load_checkpoint",
           "load_weights", "restore_rng_state", "run_tag", "save_checkpoint"]


def run_tag(settings: Experiment) -> str:
    """The output tag: the script's, with ``_synthetic`` appended for ``--synthetic`` runs so a
    smoke test never overwrites a real run's checkpoints."""
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
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide checkpoints from the group
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(state: Mapping[str, Any], is_best: bool, out_dir: str, tag: str) -> list[str]:
    """Save ``state`` as the latest checkpoint and, if ``is_best``, as the best too.

    Returns:
        The paths written.
    """
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


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _safe_load(path: str) -> Any:
    """``torch.load(weights_only=True)`` on the CPU; Python 2 byte strings decoded as latin1."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except UnicodeDecodeError:
        # A Python 2 pickle (the authors' release). torch warns that pickle arguments are
        # ignored under weights_only, yet it does apply the encoding; silence that warning.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="pickle_load_args only works")
            return torch.load(path, map_location="cpu", weights_only=True, encoding="latin1")


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``) onto the CPU.

    Accepts this project's files, the authors' legacy-serialised Python 2 files (decoded with
    ``encoding='latin1'``), a ``module.`` prefix from DataParallel (removed), and a bare
    state_dict (wrapped as ``{'state_dict': ...}``).

    Raises:
        UsageError: the path is missing or not a readable checkpoint.
    """
    if not path or not os.path.isfile(path):
        raise UsageError(f"no checkpoint found at {path!r}")
    try:
        checkpoint = _safe_load(path)
    except Exception as error:  # corrupt, truncated, foreign pickle, disallowed globals ...
        raise UsageError(f"cannot read checkpoint {path}: {_first_line(error)}") from None
    if not isinstance(checkpoint, dict):
        raise UsageError(f"cannot read checkpoint {path}: it holds a {type(checkpoint).__name__}, "
                         "not a dict")
    if "state_dict" not in checkpoint:
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            checkpoint = {"state_dict": checkpoint}
        else:
            raise UsageError(f"cannot read checkpoint {path}: it has no 'state_dict' entry")
    checkpoint["state_dict"] = _strip_prefix(checkpoint["state_dict"])
    return checkpoint


def load_weights(model: nn.Module, checkpoint: Mapping[str, Any], arch: str, path: str) -> None:
    """Load ``checkpoint['state_dict']`` into ``model`` strictly.

    Raises:
        UsageError: the checkpoint names another known architecture, or its keys or shapes
            do not fit ``model`` (one line naming the first differences).
    """
    saved_arch = str(checkpoint.get("arch", "")).lower()
    if saved_arch in MODELS and saved_arch != arch:
        raise UsageError(f"checkpoint {path} holds a {saved_arch} network, but this run builds "
                         f"{arch} (use -a {saved_arch})")
    saved, expected = checkpoint["state_dict"], model.state_dict()
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    wrong = sorted(k for k in set(saved) & set(expected)
                   if tuple(saved[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            details.append(f"unexpected {', '.join(unexpected[:3])}"
                           f"{' ...' if len(unexpected) > 3 else ''}")
        if wrong:
            k = wrong[0]
            details.append(f"{k} is {tuple(saved[k].shape)}, expected {tuple(expected[k].shape)}")
        raise UsageError(f"checkpoint {path} does not fit {arch} at this --width: "
                         f"{'; '.join(details)}")
    model.load_state_dict(saved, strict=True)
