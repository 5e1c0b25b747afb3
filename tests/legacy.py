"""Builds checkpoints the way the authors' PyTorch 0.3.1 / Python 2.7 release did:
legacy (non-zip) serialisation, pickle protocol 2, Python 2 byte strings, tensors rebuilt with
``torch._utils._rebuild_tensor`` (0.3's form, before ``_rebuild_tensor_v2``), and optionally the
``module.`` prefix DataParallel added to every weight name."""
from __future__ import annotations

import pickle
import struct
import types
import warnings
from typing import Any

import torch
from torch import nn

__all__ = ["authors_checkpoint", "save_py2_legacy"]


class _Py2Pickler(pickle._Pickler):
    """Pure-Python pickler that writes ``str`` as Python 2 ``str`` (latin-1 bytes, BINSTRING) and
    tensors in PyTorch 0.3's form."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: str) -> None:
        data = obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str

    def reducer_override(self, obj: Any):
        if isinstance(obj, torch.Tensor):
            with warnings.catch_warnings():  # TypedStorage is deprecated, but 0.3 pickled it
                warnings.simplefilter("ignore")
                storage = obj.detach().storage()
            return (torch._utils._rebuild_tensor,
                    (storage, obj.storage_offset(), tuple(obj.size()), obj.stride()))
        return NotImplemented


def _dump(obj: Any, f, protocol: int = 2) -> None:
    _Py2Pickler(f, protocol).dump(obj)


_PY2_PICKLE = types.SimpleNamespace(Pickler=_Py2Pickler, dump=_dump, __name__="py2_pickle")


def save_py2_legacy(obj: Any, path: str) -> None:
    """``torch.save`` in the legacy format with protocol 2 and Python 2 strings."""
    torch.save(obj, path, pickle_module=_PY2_PICKLE, pickle_protocol=2,
               _use_new_zipfile_serialization=False)


def authors_checkpoint(model: nn.Module, arch: str | None, prefix: str = "module.",
                       epoch: int = 125, best_prec1: float = 99.59) -> dict[str, Any]:
    """The dict the authors' scripts saved: epoch, arch, state_dict, best_prec1, optimizer (an
    SGD state of their era: no momentum buffers, parameter ids as plain ints). ``arch=None``
    leaves the entry out. A non-ASCII note forces the latin-1 decoding a real Python 2 file needs.
    """
    params = list(model.state_dict())
    checkpoint: dict[str, Any] = {
        "epoch": epoch,
        "state_dict": {prefix + k: v.clone() for k, v in model.state_dict().items()},
        "best_prec1": best_prec1,
        "optimizer": {"state": {}, "param_groups": [{
            "lr": 0.0017, "momentum": 0, "dampening": 0, "weight_decay": 0.0005,
            "nesterov": False, "params": [140000000 + i for i in range(len(params))]}]},
        "note": "entra\xeenement",
    }
    if arch is not None:
        checkpoint["arch"] = arch
    return checkpoint
