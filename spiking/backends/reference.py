"""The ``reference`` backend: the algorithm one time step at a time (docs/algorithm.md).

Every neuron runs its own methods (:mod:`spiking.neurons`: charge, fire, reset; backward_step)
step by step, with one autograd node per step (``STEP_BY_STEP``), so autograd itself carries the
gradient from step to step; synapses apply their convolution or matrix product to each step
alone. It is the slowest backend and the one every other is tested against (tests/test_parity.py
also holds it to a literal port of the authors' loop). The neuron loops here are also the
``torch`` backend's, and run every neuron that no fused kernel implements.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["average_pool_backward", "conv_backward", "conv_forward", "describe",
           "integrator_forward", "linear_backward", "linear_forward", "neuron_backward",
           "neuron_forward", "poisson_draws", "poisson_encode", "pooling_backward",
           "pooling_forward", "unavailable"]

NAME = "reference"
DESCRIPTION = "every neuron's own methods and every synapse, one time step at a time"
NEURONS = None  # every neuron: its own methods
DTYPES = None
STEP_BY_STEP = True


def unavailable(device: torch.device) -> str | None:
    """Runs anywhere."""
    return None


def describe() -> str:
    return DESCRIPTION


def neuron_forward(neuron: nn.Module, current: Tensor, membrane: Tensor,
                   stats: tuple[Tensor, ...], out: Tensor, kept: Tensor | None) -> Tensor:
    """Run ``neuron`` over ``current`` ``[T, B, ...]`` from ``membrane`` ``[B, ...]``: the spikes
    into ``out`` (0 or 1; may be ``current`` itself: each step's current is read before its
    spikes are written), each step added to ``stats``, and into ``kept``, if given, what the
    backward keeps of each step: the spikes (bool), or the potential ``u_t`` for a neuron that
    keeps it. Returns the final membrane (``membrane`` may be updated in place)."""
    for t in range(current.shape[0]):
        potential = neuron.charge(membrane, current[t])
        spikes = neuron.fire(potential)
        membrane = neuron.reset(potential, spikes)
        if stats:
            neuron.update_stats(stats, spikes)
        out[t] = spikes
        if kept is not None:
            kept[t] = potential if neuron.keeps_potential else spikes
    return membrane


def neuron_backward(neuron: nn.Module, grad_spikes: Tensor, kept: Tensor,
                    scale: Tensor | float, carry: Tensor) -> Tensor:
    """``dLoss/dI`` ``[T, B, ...]`` from ``g = dLoss/ds`` and what the forward ``kept``
    ``[T, B, ...]`` (the bool spikes, or the potentials), going back in time from ``carry``
    (``dLoss/du`` of the step after the last, ``[B, ...]``) through ``neuron.backward_step``."""
    grad_current = torch.empty_like(grad_spikes)
    delta = carry
    for t in range(grad_spikes.shape[0] - 1, -1, -1):
        delta = neuron.backward_step(grad_spikes[t], delta, kept[t], scale)
        grad_current[t] = delta
    return grad_current


def pooling_forward(neuron: nn.Module, spikes: Tensor, membrane: Tensor,
                    stats: tuple[Tensor, ...], kept: Tensor | None
                    ) -> tuple[Tensor, Tensor]:
    """A pooling neuron over ``spikes`` ``[T, B, C, H, W]``: each step's k x k average pool,
    then :func:`neuron_forward`. Returns ``(spikes [T, B, C, H // k, W // k], membrane)``."""
    current = torch.stack([F.avg_pool2d(step, neuron.kernel_size) for step in spikes])
    return current, neuron_forward(neuron, current, membrane, stats, current, kept)


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


def pooling_backward(neuron: nn.Module, grad_pooled: Tensor, kept: Tensor,
                     scale: Tensor | float, carry: Tensor, input_hw: tuple[int, int]
                     ) -> tuple[Tensor, Tensor]:
    """The pooling neuron's backward: :func:`neuron_backward`, then the average pool's.
    Returns the input's gradient ``[T, B, C, H, W]`` and ``dLoss/du`` of step 0 (the carry of
    the chunk before)."""
    delta = neuron_backward(neuron, grad_pooled, kept, scale, carry)
    return average_pool_backward(delta, neuron.kernel_size, input_hw), delta[0]


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
