"""The versions the code needs, checked where a script starts, so that an unfit install ends in
one ``error:`` line instead of a traceback deep inside a run."""
from __future__ import annotations

import importlib
import importlib.metadata
import re
from types import ModuleType

import torch

from .experiment import UsageError

# torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype: torch 2.4
TORCH_FLOOR = (2, 4)
_INSTALL = "pip install -r requirements.txt (README.md, Install)"


def _release(version: str) -> tuple[int, int]:
    found = re.match(r"(\d+)\.(\d+)", version)
    return (int(found[1]), int(found[2])) if found else (0, 0)


def check_torch(version: str | None = None) -> None:
    """Raise :class:`UsageError` if torch (``version``, default the installed one) is older
    than :data:`TORCH_FLOOR`."""
    version = version or torch.__version__
    if _release(version) < TORCH_FLOOR:
        floor = ".".join(map(str, TORCH_FLOOR))
        raise UsageError(f"torch {version} is older than the {floor} this project needs "
                         f"(torch.get_autocast_dtype); {_INSTALL}")


def import_torchvision() -> ModuleType:
    """``torchvision``, or :class:`UsageError` naming both versions when it was built for
    another torch (its C++ operators, e.g. ``torchvision::nms``, then fail to register)."""
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as error:
        try:
            installed = importlib.metadata.version("torchvision")
        except importlib.metadata.PackageNotFoundError:
            installed = "(version unknown)"
        raise UsageError(f"torchvision {installed} does not match torch {torch.__version__} "
                         f"({error}); install the torchvision release made for this torch, "
                         f"e.g. {_INSTALL}") from None
