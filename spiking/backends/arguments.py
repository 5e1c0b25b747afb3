"""Checks of the arguments the C kernels get: C code trusts its arguments, and a wrong shape
would read or write past a buffer."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_tensor", "check_window"]


def check_tensor(tensor: Tensor | None, shape: torch.Size | tuple[int, ...], name: str,
                 dtype: torch.dtype | None = None) -> None:
    """``tensor`` (if given) has ``shape`` (and ``dtype``) and is contiguous."""
    if tensor is None:
        return
    if tensor.shape != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
    if dtype is not None and tensor.dtype != dtype:
        raise ValueError(f"{name} has dtype {tensor.dtype}, expected {dtype}")
    if not tensor.is_contiguous():
        raise ValueError(f"{name} is not contiguous")


def check_window(kernel_size: int, pooled: tuple[int, int], image: tuple[int, int]) -> None:
    """A k x k pool (stride k, no padding) of ``image`` (H, W) gives ``pooled``."""
    height, width = image
    if kernel_size < 1 or tuple(pooled) != (height // kernel_size, width // kernel_size):
        raise ValueError(f"a {kernel_size}x{kernel_size} pool of {height}x{width} does not give "
                         f"{pooled[0]}x{pooled[1]}")
