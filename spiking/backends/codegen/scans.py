"""Running a neuron's generated scans: the host side that the ``cpu`` and ``triton`` backends
share. They differ only in the :data:`Launch` that runs a kernel on its arrays.

The forward keeps for the backward what the neuron's kernels need (:class:`FusedRecord`); the
backward returns the currents' gradient and, for a neuron whose parameters train, their
gradients: the kernel sums each operand's gradient over the steps per neuron, the sums are
reduced to the operand's shape, and autograd carries them through the host computation that
made the operand from the parameters.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..arguments import check_tensor
from .kernel import NEURONS, NUMBER, Kernel
from .neuron_scan import NeuronScan, neuron_scan

__all__ = ["FusedRecord", "Launch", "integrate", "scan_backward", "scan_forward"]

# Runs ``kernel`` over ``steps`` x ``neurons`` on its arrays, named as its slots name them.
Launch = Callable[[NeuronScan, Kernel, dict[str, Tensor], int, int], None]


@dataclass
class FusedRecord:
    """What a generated forward keeps for its backward: the kernels, and per step the spikes
    (bool) or the potentials, with the chunk's first membrane and its currents where the
    gradient of a parameter through ``charge`` reads them."""

    scan: NeuronScan
    kept: Tensor
    start: Tensor | None
    currents: Tensor | None


def _operand_arrays(kernel: Kernel, values: dict[str, Tensor],
                    step_shape: torch.Size) -> dict[str, Tensor]:
    """Each operand as its kernel slot reads it: one number, or one per neuron."""
    arrays = {}
    for slot in kernel.slots:
        if slot.input in values:
            value = values[slot.input].detach()
            if slot.kind == NUMBER:
                arrays[slot.array] = value.reshape(1).contiguous()
            elif slot.kind == NEURONS:
                arrays[slot.array] = value.expand(step_shape).contiguous()
    return arrays


def scan_forward(launch: Launch, neuron: nn.Module, current: Tensor, membrane: Tensor,
                 stats: tuple[Tensor, ...], out: Tensor, record: bool
                 ) -> tuple[Tensor, FusedRecord | None]:
    """``neuron`` over ``current`` ``[T, B, ...]`` from ``membrane`` ``[B, ...]`` (updated in
    place), the spikes into ``out`` (may be ``current``); with ``record``, ``stats`` updated and
    what the backward needs returned."""
    scan = neuron_scan(neuron, membrane)
    check_tensor(current, out.shape, "current", membrane.dtype)
    for stat in stats:
        check_tensor(stat, membrane.shape, "spike statistics", membrane.dtype)
    kernel = scan.kernels["forward" if record else "evaluation"]
    currents = current.clone() if record and "current" in scan.saves else None
    start = membrane.clone() if record and "start" in scan.saves else None
    if out is not current:
        out.copy_(current)
    arrays = {"values": out, "membrane": membrane}
    if record:
        arrays["kept"] = torch.empty(
            out.shape, dtype=membrane.dtype if scan.keeps_potential else torch.bool,
            device=out.device)
        arrays.update((f"stat{k}", stat) for k, stat in enumerate(stats))
    if kernel.operand_inputs:
        with torch.no_grad():
            operands = scan.operands(neuron, kernel)
        arrays.update(_operand_arrays(kernel, operands, membrane.shape))
    launch(scan, kernel, arrays, out.shape[0], membrane.numel())
    return membrane, (FusedRecord(scan, arrays["kept"], start, currents) if record else None)


def _parameter_gradients(neuron: nn.Module, operands: dict[str, Tensor],
                         sums: dict[str, Tensor]) -> tuple[Tensor | None, ...]:
    """The gradients of ``neuron``'s parameters from the per-neuron sums of its operands'
    gradients, carried through the host computation of the operands."""
    parameters = list(neuron.parameters())
    trained = [p for p in parameters if p.requires_grad]
    if not sums or not trained:
        return (None,) * len(parameters)
    outputs = [operands[name] for name in sums]
    cotangents = [sums[name].sum_to_size(operands[name].shape) for name in sums]
    grads = iter(torch.autograd.grad(outputs, trained, cotangents, allow_unused=True))
    return tuple(next(grads) if p.requires_grad else None for p in parameters)


def scan_backward(launch: Launch, neuron: nn.Module, saved: FusedRecord, grad_spikes: Tensor,
                  scale: Tensor | float, carry: Tensor
                  ) -> tuple[Tensor, tuple[Tensor | None, ...]]:
    """``dLoss/dI`` ``[T, B, ...]`` from ``g = dLoss/ds`` going back from ``carry`` (``dLoss/du``
    of the step after the chunk), and the gradients of ``neuron.parameters()``."""
    scan, kernel = saved.scan, saved.scan.kernels["backward"]
    step_shape = carry.shape
    check_tensor(grad_spikes, saved.kept.shape, "grad_spikes", carry.dtype)
    if "scale" not in kernel.array_names:
        scale = None  # a derivative that does not read the factor
    elif isinstance(scale, Tensor):
        scale = scale.detach().to(carry.dtype).expand(step_shape).contiguous()
    else:
        scale = torch.full_like(carry, scale)
    grad_current = torch.empty_like(grad_spikes)
    arrays = {"grad": grad_spikes, "kept": saved.kept, "delta": carry.clone(),
              "grad_current": grad_current, "scale": scale, "start": saved.start,
              "current": saved.currents}
    operands, sums = {}, {}
    if kernel.operand_inputs or scan.trainable:
        with torch.enable_grad():
            operands = scan.operands(neuron, kernel, scan.trainable)
        sums = {name: torch.zeros_like(carry) for name in scan.trainable}
        arrays.update((f"grad:{name}", total) for name, total in sums.items())
        arrays.update(_operand_arrays(kernel, operands, step_shape))
    launch(scan, kernel, arrays, grad_spikes.shape[0], carry.numel())
    return grad_current, _parameter_gradients(neuron, operands, sums)


def integrate(launch: Launch, neuron: nn.Module, current: Tensor, membrane: Tensor) -> Tensor:
    """The output integrator's membrane after ``current`` ``[T, B, K]`` from ``membrane``
    ``[B, K]`` (updated in place)."""
    scan = neuron_scan(neuron, membrane)
    check_tensor(current, (current.shape[0], *membrane.shape), "current", membrane.dtype)
    kernel = scan.kernels["integrate"]
    with torch.no_grad():
        operands = scan.operands(neuron, kernel)
    launch(scan, kernel, {"current": current, "membrane": membrane,
                          **_operand_arrays(kernel, operands, membrane.shape)},
           current.shape[0], membrane.numel())
    return membrane
