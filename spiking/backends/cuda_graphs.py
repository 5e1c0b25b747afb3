"""The ``graphs`` backend: the ``torch`` backend with its neuron loops replayed as CUDA graphs.

The ``torch`` backend's neurons loop over the time steps in Python, a few kernel launches per
step and layer: on a GPU that loop, not the arithmetic, bounds a step at T = 100. Here each
loop (:mod:`.reference`'s ``neuron_forward``, ``neuron_backward`` and ``integrator_forward``,
the neuron's own methods) is captured once as a CUDA graph for its shapes and replayed for every
chunk: one replay plus a copy of each input and output per chunk and layer, whatever T. No
Triton is needed. Synapses, pooling and encoding are the ``torch`` backend's.

A captured graph reads and writes fixed buffers (:class:`Replay`): the chunk's inputs are copied
in and its outputs copied out. Graphs are kept per neuron class, attributes and held tensors
(their addresses: a graph reads them where they were at capture) and per input shapes; each
holds its buffers, about four float copies of a chunk's currents. Not served, so run on
``torch`` with one log line: neurons whose parameters train (their gradient is an autograd
computation inside the loop). The capture runs on CUDA only (:data:`CAPTURES`); the tests run
the same buffers and loops on the CPU by registering an eager stand-in there.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch
from torch import Tensor, nn

from . import reference
from .codegen import neuron_key
from .pytorch import (average_pool, average_pool_backward, conv_backward, conv_forward,
                      linear_backward, linear_forward, poisson_encode)
from .reference import StepRecord, trains

__all__ = ["CAPTURES", "Replay", "average_pool", "average_pool_backward", "capture_cuda_graph",
           "conv_backward", "conv_forward", "describe", "forget_graphs", "integrator_forward",
           "linear_backward", "linear_forward", "neuron_backward", "neuron_forward",
           "neuron_refusal", "poisson_encode", "unavailable"]

NAME = "graphs"
DESCRIPTION = "the torch backend's neuron loops captured once as CUDA graphs, replayed per chunk"
DTYPES = None
STEP_BY_STEP = False

# A function of fixed input buffers -> (replay, its fixed outputs): ``replay()`` runs the
# function again on the buffers' current values and leaves its results in those outputs.
Capture = Callable[[Callable[..., tuple[Tensor, ...]], tuple[Tensor, ...]],
                   tuple[Callable[[], None], tuple[Tensor, ...]]]


def capture_cuda_graph(function: Callable[..., tuple[Tensor, ...]], inputs: tuple[Tensor, ...]
                       ) -> tuple[Callable[[], None], tuple[Tensor, ...]]:
    """``function(*inputs)`` captured as a CUDA graph, after one warm-up run on a side stream
    (lazy initialisations must not happen inside the capture). ``thread_local``: the backward
    captures on autograd's device thread while the main thread may be launching."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        function(*inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        outputs = function(*inputs)
    return graph.replay, outputs


# How graphs are captured on each device type.
CAPTURES: dict[str, Capture] = {"cuda": capture_cuda_graph}


def unavailable(device: torch.device) -> str | None:
    """Why graphs cannot be captured on ``device``, or None."""
    if device.type not in CAPTURES:
        return f"it replays CUDA graphs: CUDA tensors only, not {device.type}"
    return None


def neuron_refusal(neuron: nn.Module, like: Tensor) -> str | None:
    """Neurons whose parameters train are refused: their gradient is autograd inside the loop."""
    if trains(neuron):
        return "it does not capture the gradient of a neuron's trained parameters"
    return None


def describe() -> str:
    return DESCRIPTION


class Replay:
    """``function`` captured on copies of ``like`` (its fixed input buffers); calling it copies
    new values into the buffers, replays, and returns the fixed outputs (read them, or copy
    them, before the next call)."""

    def __init__(self, function: Callable[..., tuple[Tensor, ...]],
                 like: Sequence[Tensor]) -> None:
        self.inputs = tuple(t.detach().clone() for t in like)
        self.replay, self.outputs = CAPTURES[self.inputs[0].device.type](function, self.inputs)

    def __call__(self, *values: Tensor) -> tuple[Tensor, ...]:
        for buffer, value in zip(self.inputs, values):
            buffer.copy_(value)
        self.replay()
        return self.outputs


_REPLAYS: dict[Hashable, Replay] = {}


def forget_graphs() -> None:
    """Drop every captured graph and its buffers (their memory returns to PyTorch's cache)."""
    _REPLAYS.clear()


def _replay(neuron: nn.Module, what: Hashable, inputs: Sequence[Tensor],
            function: Callable[..., tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
    """Run ``function`` on ``inputs`` through the graph kept for ``neuron``, ``what`` and the
    inputs' shapes, captured now if there is none."""
    held = tuple(t.data_ptr() for t in (*neuron.parameters(), *neuron.buffers()))
    key = (neuron_key(neuron), held, what,
           tuple((t.shape, t.dtype, t.device) for t in inputs))
    replay = _REPLAYS.get(key)
    if replay is None:
        replay = _REPLAYS[key] = Replay(function, inputs)
    return replay(*inputs)


def neuron_forward(neuron: nn.Module, current: Tensor, membrane: Tensor,
                   stats: tuple[Tensor, ...], out: Tensor, record: bool
                   ) -> tuple[Tensor, StepRecord | None]:
    """As :func:`.reference.neuron_forward`, one graph replay for the chunk."""
    def loop(current: Tensor, membrane: Tensor, *stats: Tensor) -> tuple[Tensor, ...]:
        spikes = torch.empty_like(current)
        final, saved = reference.neuron_forward(neuron, current, membrane, stats, spikes, record)
        return spikes, final, *stats, *(() if saved is None else (saved.kept,))

    spikes, final, *rest = _replay(neuron, ("forward", record), (current, membrane, *stats), loop)
    out.copy_(spikes)
    for stat, updated in zip(stats, rest):
        stat.copy_(updated)
    return final.clone(), (StepRecord(rest[-1].clone()) if record else None)


def neuron_backward(neuron: nn.Module, saved: StepRecord, grad_spikes: Tensor,
                    scale: Tensor | float, carry: Tensor
                    ) -> tuple[Tensor, tuple[Tensor | None, ...]]:
    """As :func:`.reference.neuron_backward`, one graph replay for the chunk; a ``scale`` that
    is a number is part of the graph."""
    by_tensor = isinstance(scale, Tensor)

    def loop(grad: Tensor, kept: Tensor, delta: Tensor, *factor: Tensor) -> tuple[Tensor]:
        gradient, _ = reference.neuron_backward(neuron, StepRecord(kept), grad,
                                                factor[0] if by_tensor else scale, delta)
        return (gradient,)

    inputs = (grad_spikes, saved.kept, carry, *((scale.detach(),) if by_tensor else ()))
    (grad,) = _replay(neuron, ("backward", None if by_tensor else scale), inputs, loop)
    return grad.clone(), (None,) * len(list(neuron.parameters()))


def integrator_forward(neuron: nn.Module, current: Tensor, membrane: Tensor) -> Tensor:
    """As :func:`.reference.integrator_forward`, one graph replay for the chunk."""
    def loop(current: Tensor, membrane: Tensor) -> tuple[Tensor]:
        return (reference.integrator_forward(neuron, current, membrane),)

    (final,) = _replay(neuron, "integrate", (current, membrane), loop)
    return final.clone()
