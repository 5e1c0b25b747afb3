"""The ``cpu`` backend: fused C kernels for the paper's neurons and event-driven synapses.

- Neurons: the LIF, IF and pooling neurons and the output integrator (``NEURONS``) run in C
  (:mod:`.cpu_kernels`): each block of neurons walks through all steps of a chunk in one pass,
  giving the bits of the neurons' own methods. Other neurons run on the ``torch`` backend.
- Synapses: a layer whose input in a chunk is a spike train no denser than
  :data:`EVENT_DENSITY_MAX` runs event-driven (:mod:`.event_kernels`): its forward and weight
  gradient cost a weight column per input spike, and it keeps the spikes' positions (4 bytes per
  spike) for the backward. Its input gradient is computed only at the input's spikes, 0
  elsewhere, when the layer's input is declared to come from spiking neurons
  (``SpikingConv2d.input_from_neurons``), which read their gradient only where they spiked;
  otherwise it is the dense one. Denser inputs take :mod:`.pytorch`'s time-folded synapses, with
  the spikes packed in C.
- The Poisson input: the spikes of the shared uniform draws in one C pass.

The kernels need a C compiler the first time (``$CC``); without one, ``torch`` runs everything,
with the same results, after one line in the log.
"""
from __future__ import annotations

import ctypes
import weakref

import torch
from torch import Tensor, nn

from . import codegen, cpu_kernels, event_kernels, pytorch
from .codegen import neuron_refusal
from .cpu_kernels import threads_for
from .event_kernels import Events
from .reference import poisson_draws

__all__ = ["EVENT_DENSITY_MAX", "average_pool", "average_pool_backward", "conv_backward",
           "conv_forward", "describe", "event_density_max", "integrator_forward",
           "linear_backward", "linear_forward", "neuron_backward", "neuron_forward",
           "neuron_refusal", "poisson_encode", "unavailable"]

NAME = "cpu"
DESCRIPTION = "fused C kernels, event-driven synapses"
DTYPES = frozenset({torch.float32, torch.float64})
STEP_BY_STEP = False

# A synapse layer runs event-driven in a chunk whose input spike train has at most this fraction
# of its entries nonzero, densely above it: per kind of layer, where forward plus backward of the
# two paths cost the same on the 2-core CPU (benchmarks/crossover.py; table in
# benchmarks/README.md, *Event-driven synapses*: 3x3 and 5x5 convolutions 0.16 to 0.25, lower
# for one input channel and 1x1; linear layers 0.02 to 0.05). One number sets both kinds: 0
# turns the event-driven path off, 1 forces it (tests).
EVENT_DENSITY_MAX: float | dict[str, float] = {"conv": 0.15, "linear": 0.03}


def event_density_max(kind: str) -> float:
    """The crossover density of :data:`EVENT_DENSITY_MAX` for ``kind``, ``conv`` or ``linear``."""
    if isinstance(EVENT_DENSITY_MAX, dict):
        return EVENT_DENSITY_MAX[kind]
    return EVENT_DENSITY_MAX


def unavailable(device: torch.device) -> str | None:
    """Why the C kernels cannot run on tensors of ``device``, or None."""
    if device.type != "cpu":
        return f"it runs on CPU tensors, not {device.type}"
    if not (cpu_kernels.available() and event_kernels.available()):
        return (f"its C kernels could not be built: {cpu_kernels.build_error()}; set CC to a C "
                "compiler, or SPIKING_KERNEL_CACHE to a writable folder")
    return None


def describe() -> str:
    return (f"{DESCRIPTION} up to input density conv {event_density_max('conv')}, linear "
            f"{event_density_max('linear')}")


def _functions(scan: codegen.NeuronScan) -> dict[str, ctypes._CFuncPtr]:
    """``scan``'s kernels compiled (once, cached on disk): the C function of each kernel."""
    functions = scan.compiled.get(NAME)
    if functions is None:
        kernels = list(scan.kernels.values())
        what = f"the fused scans of {scan.name} ({str(scan.dtype).removeprefix('torch.')})"
        library = cpu_kernels.load_generated(codegen.c_source(kernels, scan.dtype, "scan"),
                                             f"scan-{scan.name}", what)
        functions = {k.name: getattr(library, f"scan_{k.name}") for k in kernels}
        scan.compiled[NAME] = functions
    return functions


def _launch(scan: codegen.NeuronScan, kernel: codegen.Kernel, arrays: dict[str, Tensor],
            steps: int, neurons: int) -> None:
    names = kernel.array_names
    pointers = (ctypes.c_void_p * len(names))(*[arrays[name].data_ptr() for name in names])
    _functions(scan)[kernel.name](steps, neurons, pointers, threads_for(steps * neurons, neurons))


def neuron_forward(neuron: nn.Module, current: Tensor, membrane: Tensor,
                   stats: tuple[Tensor, ...], out: Tensor, record: bool
                   ) -> tuple[Tensor, codegen.FusedRecord | None]:
    """As :func:`.reference.neuron_forward`, in the C scan generated from the neuron's methods;
    ``membrane`` is updated in place."""
    return codegen.scan_forward(_launch, neuron, current, membrane, stats, out, record)


def neuron_backward(neuron: nn.Module, saved: codegen.FusedRecord, grad_spikes: Tensor,
                    scale: Tensor | float, carry: Tensor
                    ) -> tuple[Tensor, tuple[Tensor | None, ...]]:
    """As :func:`.reference.neuron_backward`, in the generated C gradient scan."""
    return codegen.scan_backward(_launch, neuron, saved, grad_spikes, scale, carry)


def integrator_forward(neuron: nn.Module, current: Tensor, membrane: Tensor) -> Tensor:
    """As :func:`.reference.integrator_forward`, in the generated C scan."""
    return codegen.integrate(_launch, neuron, current, membrane)


def average_pool(spikes: Tensor, kernel_size: int) -> Tensor:
    """As :func:`.reference.average_pool`, in C."""
    return cpu_kernels.avg_pool(spikes, kernel_size)


def average_pool_backward(grad_pooled: Tensor, kernel_size: int,
                          input_hw: tuple[int, int]) -> Tensor:
    """As :func:`.reference.average_pool_backward`, in C."""
    return cpu_kernels.avg_pool_backward(grad_pooled, kernel_size, *input_hw)


def poisson_encode(images: Tensor, time_steps: int, scale: float,
                   generator: torch.Generator | None) -> Tensor:
    """As :func:`.reference.poisson_encode`: the same draws, the spikes in one C pass."""
    return cpu_kernels.poisson_spikes(*poisson_draws(images, time_steps, scale, generator))


def _events(spikes: Tensor, weight: Tensor, kind: str) -> Events | None:
    """The events of ``spikes`` ``[T, B, ...]`` (folded to ``[T*B, ...]``) if the event-driven
    kernels should run on them: ``spikes`` and ``weight`` of one float dtype (no autocast) and
    ``spikes`` a spike train with at most :func:`event_density_max` of its entries nonzero."""
    density_max = event_density_max(kind)
    if spikes.dtype != weight.dtype or density_max <= 0 or spikes.numel() == 0:
        return None
    folded = spikes.detach().flatten(0, 1)
    return event_kernels.find_events(folded, int(density_max * folded.numel()))


def _channels_last(weight: Tensor, cache: dict) -> Tensor:
    """``weight`` ``[C', C, k, k]`` (``[F', F]``) re-laid as ``[C, k, k, C']`` (``[F, 1, 1, F']``),
    the layout in which the event kernels read a weight column per input event; kept in the
    layer's ``cache`` until the weight changes (LeNet's fc0: a 2 MB copy per chunk otherwise)."""
    held = cache.get("channels_last")
    if held is not None:
        source, version, relaid = held
        if source() is weight and version == weight._version:
            return relaid
    detached = weight.detach()
    if weight.dim() == 2:
        relaid = detached.t().contiguous().unsqueeze(1).unsqueeze(1)
    else:
        relaid = detached.permute(1, 2, 3, 0).contiguous()
    cache["channels_last"] = (weakref.ref(weight), weight._version, relaid)
    return relaid


class EventSave:
    """What an event-driven synapse keeps for its backward: the input's events and the
    channels-last weight."""

    def __init__(self, events: Events, weight_cl: Tensor) -> None:
        self.events, self.weight_cl = events, weight_cl


def _event_geometry(weight: Tensor, stride: tuple[int, int], padding: tuple[int, int]) -> bool:
    """Whether the event kernels handle this convolution: square kernel, stride and padding."""
    return (weight.shape[-1] == weight.shape[-2] and stride[0] == stride[1]
            and padding[0] == padding[1])


def _pack(x: Tensor, spike_train: bool) -> tuple[Tensor, Tensor | None]:
    """The C packing of any input, declared a spike train or not: on the CPU, reading the
    data back waits for nothing."""
    return cpu_kernels.pack_spikes(x)


def conv_forward(spikes: Tensor, weight: Tensor, stride: tuple[int, int],
                 padding: tuple[int, int], *, cache: dict, recording: bool, weight_grad: bool,
                 spike_train: bool) -> tuple[Tensor, object, bool]:
    """As :func:`.pytorch.conv_forward`; event-driven when the input is sparse enough."""
    events = _events(spikes, weight, "conv") if _event_geometry(weight, stride, padding) else None
    if events is None:
        return pytorch.conv_forward(spikes, weight, stride, padding, cache=cache,
                                    recording=recording, weight_grad=weight_grad,
                                    spike_train=spike_train, pack=_pack)
    weight_cl = _channels_last(weight, cache)
    current = event_kernels.conv_forward(events, weight_cl, stride[0], padding[0])
    return (current.unflatten(0, spikes.shape[:2]),
            EventSave(events, weight_cl) if recording else None, True)


def _event_backward(saved: EventSave, weight: Tensor, grad_current: Tensor, stride: int,
                    padding: int, needs_input: bool, needs_weight: bool, sparse_input: bool
                    ) -> tuple[Tensor | None, Tensor | None, bool]:
    """The event kernels' gradients: the weight's in the weight's layout, the input's at the
    events (if ``sparse_input``), and whether the dense input gradient is still to be done."""
    folded = grad_current.flatten(0, 1)
    at_events = needs_input and sparse_input
    grad_weight, grad_input = event_kernels.conv_backward(
        saved.events, saved.weight_cl, folded, stride, padding, needs_weight, at_events)
    if grad_weight is not None:
        grad_weight = (grad_weight.flatten(1).t() if weight.dim() == 2
                       else grad_weight.permute(3, 0, 1, 2))
    return grad_input, grad_weight, needs_input and not at_events


def conv_backward(saved: object, weight: Tensor, grad_current: Tensor, stride: tuple[int, int],
                  padding: tuple[int, int], input_shape: torch.Size, needs_input: bool,
                  needs_weight: bool, sparse_input: bool) -> tuple[Tensor | None, Tensor | None]:
    """As :func:`.pytorch.conv_backward`, from the events if the forward ran event-driven."""
    if not isinstance(saved, EventSave):
        return pytorch.conv_backward(saved, weight, grad_current, stride, padding, input_shape,
                                     needs_input, needs_weight, sparse_input)
    grad_input, grad_weight, dense_input = _event_backward(
        saved, weight, grad_current, stride[0], padding[0], needs_input, needs_weight,
        sparse_input)
    if dense_input:
        grad_input, _ = pytorch.conv_backward(None, weight, grad_current, stride, padding,
                                              input_shape, True, False, False)
        return grad_input, grad_weight
    if grad_input is not None:
        grad_input = grad_input.unflatten(0, input_shape[:2])
    return grad_input, grad_weight


def linear_forward(spikes: Tensor, weight: Tensor, *, cache: dict, recording: bool,
                   weight_grad: bool, spike_train: bool) -> tuple[Tensor, object, bool]:
    """As :func:`.pytorch.linear_forward`; event-driven when the input is sparse enough (a
    linear layer is the 1x1 convolution of ``[F, 1, 1]`` images)."""
    events = _events(spikes, weight, "linear")
    if events is None:
        return pytorch.linear_forward(spikes, weight, cache=cache, recording=recording,
                                      weight_grad=weight_grad, spike_train=spike_train,
                                      pack=_pack)
    weight_cl = _channels_last(weight, cache)
    current = event_kernels.conv_forward(events, weight_cl)
    return (current.unflatten(0, spikes.shape[:2]),
            EventSave(events, weight_cl) if recording else None, True)


def linear_backward(saved: object, weight: Tensor, grad_current: Tensor, input_shape: torch.Size,
                    needs_input: bool, needs_weight: bool, sparse_input: bool
                    ) -> tuple[Tensor | None, Tensor | None]:
    """As :func:`.pytorch.linear_backward`, from the events if the forward ran event-driven."""
    if not isinstance(saved, EventSave):
        return pytorch.linear_backward(saved, weight, grad_current, input_shape, needs_input,
                                       needs_weight, sparse_input)
    grad_input, grad_weight, dense_input = _event_backward(
        saved, weight, grad_current, 1, 0, needs_input, needs_weight, sparse_input)
    if dense_input:
        grad_input = grad_current @ weight
    elif grad_input is not None:
        grad_input = grad_input.unflatten(0, input_shape[:2])
    return grad_input, grad_weight
