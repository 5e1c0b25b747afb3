"""The contract every backend module keeps: :class:`KernelTable`.

A backend is a module (``reference``, ``pytorch``, ``cpu``, ``triton_kernels``) whose functions
have the signatures below; :mod:`spiking.functional` and :mod:`spiking.synapses` call them
through the table :func:`spiking.backends.select` returns, so the protocol is the type of that
table. ``isinstance(module, KernelTable)`` checks that every name is present;
:func:`check_table` also that every function is callable, and refuses a module otherwise.

Shapes: currents, spikes and membranes are ``[T, B, ...]`` (a neuron's ``like`` and ``membrane``
one step's ``[B, ...]``); images ``[B, C, H, W]``; conv weights ``[C', C, k, k]``, linear
weights ``[F', F]``. What a forward keeps for its backward (``saved``) is the backend's own.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = ["ATTRIBUTES", "KERNELS", "KernelTable", "check_table"]


@runtime_checkable
class KernelTable(Protocol):
    """The functions and constants of one backend module."""

    NAME: str  # how SPIKING_BACKEND and use_backend name it
    DESCRIPTION: str
    DTYPES: frozenset[torch.dtype] | None  # the floating dtypes it runs; None: any
    STEP_BY_STEP: bool  # neurons run one autograd node per time step (the reference)

    def unavailable(self, device: torch.device) -> str | None:
        """Why the backend cannot run on tensors of ``device``, or None."""

    def describe(self) -> str:
        """One line for logs: what runs."""

    def neuron_refusal(self, neuron: nn.Module, like: Tensor) -> str | None:
        """Why it cannot run ``neuron`` on currents like ``like`` ``[T, B, ...]``, or None."""

    def neuron_forward(self, neuron: nn.Module, current: Tensor, membrane: Tensor,
                       stats: tuple[Tensor, ...], out: Tensor, record: bool
                       ) -> tuple[Tensor, Any]:
        """Spikes of ``current`` ``[T, B, ...]`` written to ``out`` ``[T, B, ...]`` from
        ``membrane`` ``[B, ...]``, updating ``stats`` in place: ``(the last membrane [B, ...],
        what the backward needs, if ``record``, else None)``."""

    def neuron_backward(self, neuron: nn.Module, saved: Any, grad_spikes: Tensor,
                        scale: Tensor | float, carry: Tensor
                        ) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        """``(dLoss/dcurrent [T, B, ...], the neuron's parameter gradients)`` from
        ``grad_spikes`` ``[T, B, ...]`` and the last membrane's gradient ``carry`` ``[B, ...]``;
        the first membrane's gradient is written to ``carry``."""

    def average_pool(self, spikes: Tensor, kernel_size: int) -> Tensor:
        """``[T, B, C, H, W]`` -> the ``kernel_size`` window means ``[T, B, C, H/k, W/k]``."""

    def average_pool_backward(self, grad_pooled: Tensor, kernel_size: int,
                              input_hw: tuple[int, int]) -> Tensor:
        """``[T, B, C, H/k, W/k]`` -> the gradient of the pool's input ``[T, B, C, H, W]``."""

    def integrator_forward(self, neuron: nn.Module, current: Tensor, membrane: Tensor
                           ) -> Tensor:
        """The output integrator's membranes ``[T, B, F]`` from ``current`` ``[T, B, F]``."""

    def conv_forward(self, spikes: Tensor, weight: Tensor, stride: tuple[int, int],
                     padding: tuple[int, int], *, cache: dict, recording: bool,
                     weight_grad: bool, spike_train: bool) -> tuple[Tensor, Any, bool]:
        """``[T, B, C, H, W]`` -> ``(current [T, B, C', H', W'], what the backward needs,
        whether it ran event-driven)``."""

    def conv_backward(self, saved: Any, weight: Tensor, grad_current: Tensor,
                      stride: tuple[int, int], padding: tuple[int, int],
                      input_shape: torch.Size, needs_input: bool, needs_weight: bool,
                      sparse_input: bool) -> tuple[Tensor | None, Tensor | None]:
        """``(dLoss/dspikes [T, B, C, H, W], dLoss/dweight)``, each None unless needed."""

    def linear_forward(self, spikes: Tensor, weight: Tensor, *, cache: dict, recording: bool,
                       weight_grad: bool, spike_train: bool) -> tuple[Tensor, Any, bool]:
        """``[T, B, F]`` -> ``(current [T, B, F'], what the backward needs, event-driven?)``."""

    def linear_backward(self, saved: Any, weight: Tensor, grad_current: Tensor,
                        input_shape: torch.Size, needs_input: bool, needs_weight: bool,
                        sparse_input: bool) -> tuple[Tensor | None, Tensor | None]:
        """``(dLoss/dspikes [T, B, F], dLoss/dweight)``, each None unless needed."""

    def poisson_encode(self, images: Tensor, time_steps: int, scale: float,
                       generator: torch.Generator | None) -> Tensor:
        """``[B, C, H, W]`` images -> signed Poisson spikes ``[T, B, C, H, W]``."""


# the protocol's functions and constants, by name (what the tests and check_table go through)
KERNELS: tuple[str, ...] = tuple(name for name, member in vars(KernelTable).items()
                                 if callable(member) and not name.startswith("_"))
ATTRIBUTES: tuple[str, ...] = tuple(KernelTable.__annotations__)


def check_table(module: ModuleType) -> KernelTable:
    """``module`` as a :class:`KernelTable`.

    Raises:
        TypeError: naming what ``module`` lacks (a function absent or not callable, a constant
            absent).
    """
    missing = [name for name in KERNELS if not callable(getattr(module, name, None))]
    missing += [name for name in ATTRIBUTES if not hasattr(module, name)]
    if missing or not isinstance(module, KernelTable):
        raise TypeError(f"{module.__name__} is not a kernel table: it lacks "
                        f"{', '.join(missing) or 'a member of KernelTable'}")
    return module
