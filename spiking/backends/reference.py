"""The ``reference`` backend: the algorithm one time step at a time (docs/algorithm.md).

Every neuron runs its own methods (:mod:`spiking.neurons`: charge, fire, reset; backward_step)
step by step, with one autograd node per step (``STEP_BY_STEP``), so autograd itself carries the
gradient from step to step; synapses apply their convolution or matrix product to each step
alone. It is the slowest backend and the one every other is tested against (tests/test_parity.py
also holds it to a literal port of the authors' loop). The neuron loops here are also the
``torch`` backend's, and run every neuron that no fused kernel implements.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["StepRecord", "average_pool", "average_pool_backward", "conv_backward",
           "conv_forward", "describe", "integrator_forward", "linear_backward", "linear_forward",
           "neuron_backward", "neuron_forward", "neuron_refusal", "poisson_draws",
           "poisson_encode", "trains", "unavailable"]

NAME = "reference"
DESCRIPTION = "every neuron's own methods and every synapse, one time step at a time"
DTYPES = None
STEP_BY_STEP = True


def unavailable(device: torch.device) -> str | None:
    """Runs anywhere."""
    return None


def neuron_refusal(neuron: nn.Module, like: Tensor) -> str | None:
    """Runs every neuron: its own methods."""
    return None


def describe() -> str:
    return DESCRIPTION


@dataclass
class StepRecord:
    """What the neuron loops keep of a chunk for the backward: per step the bool spikes, or the
    potential ``u_t`` (a derivative that reads it, or a neuron whose parameters train); for
    the parameters' gradient through ``charge`` the chunk's first membrane and its currents."""

    kept: Tensor
    start: Tensor | None = None
    currents: Tensor | None = None


def trains(neuron: nn.Module) -> bool:
    """Whether any of ``neuron``'s parameters requires a gradient."""
    return any(p.requires_grad for p in neuron.parameters())


def neuron_forward(neuron: nn.Module, current: Tensor, membrane: Tensor,
                   stats: tuple[Tensor, ...], out: Tensor, record: bool
                   ) -> tuple[Tensor, StepRecord | None]:
    """Run ``neuron`` over ``current`` ``[T, B, ...]`` from ``membrane`` ``[B, ...]``: the spikes
    into ``out`` (0 or 1; may be ``current`` itself: each step's current is read before its
    spikes are written); with ``record``, each step added to ``stats`` and what the backward
    needs kept. Returns the final membrane (``membrane`` may be updated in place) and that
    record (None without ``record``)."""
    learning = record and trains(neuron)
    saved = None
    if record:
        potentials = neuron.keeps_potential or learning
        kept = torch.empty(current.shape, device=current.device,
                           dtype=current.dtype if potentials else torch.bool)
        saved = StepRecord(kept, membrane.clone() if learning else None,
                           current.clone() if learning else None)
    for t in range(current.shape[0]):
        potential = neuron.charge(membrane, current[t])
        spikes = neuron.fire(potential)
        membrane = neuron.reset(potential, spikes)
        if record:
            neuron.update_stats(stats, spikes)
            saved.kept[t] = potential if saved.kept.dtype != torch.bool else spikes
        out[t] = spikes
    return membrane, saved


def _step_parameter_gradients(neuron: nn.Module, saved: StepRecord, t: int, delta: Tensor,
                              later: Tensor) -> tuple[Tensor | None, ...]:
    """Step t's share of the parameters' gradients, by autograd through ``charge`` (cotangent
    ``delta = dLoss/du_t``) and ``reset`` (cotangent ``later = dLoss/dm_t``), from the step's
    inputs: the fire returns booleans and passes no gradient."""
    parameters = [p for p in neuron.parameters() if p.requires_grad]
    with torch.no_grad():
        before = saved.kept[t - 1] if t > 0 else None
        previous = saved.start if before is None else neuron.reset(before, neuron.fire(before))
        potential = saved.kept[t]
        spikes = neuron.fire(potential)
    with torch.enable_grad():
        outputs = [(neuron.charge(previous, saved.currents[t]), delta),
                   (neuron.reset(potential, spikes), later)]
        outputs = [(value, cotangent) for value, cotangent in outputs if value.requires_grad]
        if not outputs:
            return (None,) * len(parameters)
        return torch.autograd.grad([v for v, _ in outputs], parameters,
                                   [c for _, c in outputs], allow_unused=True)


def _add(total: list[Tensor | None], grads: tuple[Tensor | None, ...]) -> None:
    for k, grad in enumerate(grads):
        if grad is not None:
            total[k] = grad if total[k] is None else total[k] + grad


def neuron_backward(neuron: nn.Module, saved: StepRecord, grad_spikes: Tensor,
                    scale: Tensor | float, carry: Tensor
                    ) -> tuple[Tensor, tuple[Tensor | None, ...]]:
    """``dLoss/dI`` ``[T, B, ...]`` from ``g = dLoss/ds`` and what the forward kept, going back
    in time from ``carry`` (``dLoss/du`` of the step after the last, ``[B, ...]``) through
    ``neuron.backward_step``; and the gradients of ``neuron.parameters()`` (None for those
    that do not train)."""
    grad_current = torch.empty_like(grad_spikes)
    learning = saved.currents is not None
    parameter_grads: list[Tensor | None] = [None] * sum(p.requires_grad
                                                        for p in neuron.parameters())
    delta = carry
    for t in range(grad_spikes.shape[0] - 1, -1, -1):
        kept = saved.kept[t]
        if learning and not neuron.keeps_potential:  # kept u for the parameters; the step reads s
            kept = neuron.fire(kept)
        later, delta = delta, neuron.backward_step(grad_spikes[t], delta, kept, scale)
        if learning:
            _add(parameter_grads, _step_parameter_gradients(neuron, saved, t, delta, later))
        grad_current[t] = delta
    grads = iter(parameter_grads)
    return grad_current, tuple(next(grads) if p.requires_grad else None
                               for p in neuron.parameters())


def average_pool(spikes: Tensor, kernel_size: int) -> Tensor:
    """``[T, B, C, H, W]`` -> ``[T, B, C, H // k, W // k]``: each step's k x k average pool."""
    return torch.stack([F.avg_pool2d(step, kernel_size) for step in spikes])


def average_pool_backward(grad_pooled: Tensor, kernel_size: int,
                          input_hw: tuple[int, int]) -> Tensor:
    """The gradient of a k x k average pool (stride k) of ``[..., H, W]`` images: each pooled
    gradient divided by k^2 and spread over its window; 0 on the rows and columns the pool
    dropped."""
    k = kernel_size
    *batch, rows, cols = grad_pooled.shape
    grad = (grad_pooled / (k * k))[..., None, :, None].expand(*batch, rows, k, cols, k)
    grad = grad.reshape(*batch, rows * k, cols * k)
    pad_h, pad_w = input_hw[0] - rows * k, input_hw[1] - cols * k
    return F.pad(grad, (0, pad_w, 0, pad_h)) if pad_h or pad_w else grad


def integrator_forward(neuron: nn.Module, current: Tensor, membrane: Tensor) -> Tensor:
    """The output integrator's membrane after ``current`` ``[T, B, K]``, from ``membrane``."""
    for t in range(current.shape[0]):
        membrane = neuron.charge(membrane, current[t])
    return membrane


def conv_forward(spikes: Tensor, weight: Tensor, stride: tuple[int, int],
                 padding: tuple[int, int], *, cache: dict, recording: bool,
                 weight_grad: bool, spike_train: bool) -> tuple[Tensor, Tensor | None, bool]:
    """A bias-free convolution of each step of ``spikes`` ``[T, B, C, H, W]``:
    ``(current [T, B, C', H', W'], what the backward needs, False: not event-driven)``; the
    input is kept as it is, a declared spike train (``spike_train``) too."""
    current = torch.stack([F.conv2d(step.to(weight.dtype), weight, None, stride, padding)
                           for step in spikes])
    return current, (spikes if weight_grad else None), False


def conv_backward(saved: Tensor | None, weight: Tensor, grad_current: Tensor,
                  stride: tuple[int, int], padding: tuple[int, int], input_shape: torch.Size,
                  needs_input: bool, needs_weight: bool, sparse_input: bool
                  ) -> tuple[Tensor | None, Tensor | None]:
    """The gradients of :func:`conv_forward`, step by step: the input's ``[T, B, C, H, W]`` and
    the weight's (summed over the steps), None for one not asked for."""
    grads_input, grad_weight = [], None
    for t in range(grad_current.shape[0]):
        step = saved[t].to(grad_current.dtype) if needs_weight else None
        if step is None:
            step = grad_current.new_empty(input_shape[1:])
        grad_input, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_current[t], step, weight, None, stride, padding, (1, 1), False, (0, 0), 1,
            (needs_input, needs_weight, False))
        grads_input.append(grad_input)
        if needs_weight:
            grad_weight = grad_w if grad_weight is None else grad_weight + grad_w
    return (torch.stack(grads_input) if needs_input else None), grad_weight


def linear_forward(spikes: Tensor, weight: Tensor, *, cache: dict, recording: bool,
                   weight_grad: bool, spike_train: bool) -> tuple[Tensor, Tensor | None, bool]:
    """A bias-free linear layer on each step of ``spikes`` ``[T, B, F]``: as
    :func:`conv_forward`, ``[T, B, F']``."""
    current = torch.stack([F.linear(step.to(weight.dtype), weight) for step in spikes])
    return current, (spikes if weight_grad else None), False


def linear_backward(saved: Tensor | None, weight: Tensor, grad_current: Tensor,
                    input_shape: torch.Size, needs_input: bool, needs_weight: bool,
                    sparse_input: bool) -> tuple[Tensor | None, Tensor | None]:
    """The gradients of :func:`linear_forward`, step by step."""
    grad_input = (torch.stack([step @ weight for step in grad_current]) if needs_input
                  else None)
    grad_weight = None
    if needs_weight:
        for t in range(grad_current.shape[0]):
            grad_w = grad_current[t].T @ saved[t].to(grad_current.dtype)
            grad_weight = grad_w if grad_weight is None else grad_weight + grad_w
    return grad_input, grad_weight


def poisson_draws(images: Tensor, time_steps: int, scale: float,
                  generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """What the signed Bernoulli code compares: ``U(0, 1)`` draws ``[T, B, ...]``, fresh at
    every step, and ``|scale * x|`` and ``sign(x)`` of ``images`` ``[B, ...]``. Every backend
    draws them this way, so the spikes are the same on all."""
    uniform = torch.rand((time_steps, *images.shape), generator=generator, dtype=images.dtype,
                         device=images.device)
    return uniform, (images * scale).abs(), images.sign()


def poisson_encode(images: Tensor, time_steps: int, scale: float,
                   generator: torch.Generator | None) -> Tensor:
    """``x_t = [|scale * x| > U(0, 1)] * sign(x)``, ``[T, B, ...]``."""
    uniform, magnitude, sign = poisson_draws(images, time_steps, scale, generator)
    return (magnitude > uniform).to(images.dtype) * sign
