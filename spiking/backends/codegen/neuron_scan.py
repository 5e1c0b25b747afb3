"""A neuron's fused scans, generated from its own methods.

:func:`neuron_scan` traces a neuron's ``charge``, ``fire``, ``reset``, ``update_stats`` and
``backward_step`` (:mod:`.trace`) for one step shape and dtype and assembles three kernels
(:mod:`.kernel`):

- ``forward``: per step ``u = charge(m, I)``, ``s = fire(u)``, ``m = reset(u, s)``,
  ``update_stats(stats, s)``; the spikes written over the currents, and kept for the backward:
  the spikes, or the potential ``u`` for a derivative that reads it (``keeps_potential``) or a
  neuron whose parameters train;
- ``evaluation``: the same without statistics and without keeping anything;
- ``backward``: backwards in time ``delta = backward_step(g, delta, kept, scale)``, and, for
  every operand computed from a parameter that requires a gradient, the sum over the steps of
  its gradient through ``reset`` (cotangent ``dLoss/dm_t``, the next step's delta) and through
  ``charge`` (cotangent ``dLoss/du_t``), each traced by autograd from the method itself.

Neurons are cached by everything their trace depends on (:func:`neuron_key`): class and
methods, the numbers and tensors they hold; and by step shape and dtype.
"""
from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .aten import NotFusable
from .kernel import FIRST, NEURONS, NUMBER, ROWS, ROWS_BEFORE, STATE, SUM, Kernel, Slot
from .program import Program, Value
from .trace import MethodTrace, emit_graph, held_tensors, meta_like, trace_gradient, trace_method

__all__ = ["METHODS", "NeuronScan", "build", "build_integrator", "neuron_key", "neuron_refusal",
           "neuron_scan"]

METHODS = ("charge", "fire", "reset", "update_stats", "backward_step", "spike_stats",
           "keeps_potential")


@dataclass
class NeuronScan:
    """The kernels of one neuron for one step shape and dtype.

    Attributes:
        name: the neuron's class name, for messages.
        traces: the traced methods, by name (their operands are the kernels' inputs
            ``<method>:<k>``).
        kernels: ``forward``, ``evaluation`` and ``backward`` for a spiking neuron,
            ``integrate`` for the output integrator.
        keeps_potential: the backward keeps ``u_t`` (else the bool spikes).
        trainable: the operands whose gradient the backward sums (outputs ``grad:<operand>``).
        saves: what else the backward reads: ``start`` (the chunk's first membrane) and
            ``current`` (the currents), for gradients through ``charge``.
        compiled: each backend's compiled kernels, by backend name.
    """

    name: str
    dtype: torch.dtype
    traces: dict[str, MethodTrace]
    kernels: dict[str, Kernel]
    keeps_potential: bool = False
    trainable: tuple[str, ...] = ()
    saves: frozenset[str] = frozenset()
    compiled: dict[str, object] = field(default_factory=dict)

    def operands(self, neuron: nn.Module, kernel: Kernel,
                 also: tuple[str, ...] = ()) -> dict[str, Tensor]:
        """The host values that ``kernel`` reads (``<method>:<k>``), and those named in
        ``also``, computed from ``neuron``'s tensors by PyTorch (with autograd, where it
        records)."""
        wanted = kernel.operand_inputs.union(also)
        if not wanted:
            return {}
        tensors = held_tensors(neuron)
        values: dict[str, Tensor] = {}
        for method in sorted({name.rsplit(":", 1)[0] for name in wanted}):
            trace = self.traces[method]
            for k, value in enumerate(trace.host_values(tensors)):
                values[trace.operand_name(k)] = value
        return {name: values[name] for name in wanted}


def _operand_slots(program: Program, traces: dict[str, MethodTrace]) -> list[Slot]:
    """A slot per operand the program reads: one number, or one per neuron."""
    slots = []
    for name in program.inputs:
        if ":" in name:
            method, index = name.rsplit(":", 1)
            numel = traces[method].operand_shape(int(index)).numel()
            slots.append(Slot(NUMBER if numel == 1 else NEURONS, name, input=name))
    return slots


def _forward_program(traces: dict[str, MethodTrace], stats: int,
                     keeps_potential: bool) -> Program:
    program = Program()
    (potential,) = traces["charge"].inline(program, [program.input("membrane"),
                                                     program.input("current")])
    (spikes,) = traces["fire"].inline(program, [potential])
    if spikes not in program.boolean:
        raise NotFusable(f"{traces['fire'].qualified} returns numbers, not booleans (the spikes)")
    (membrane,) = traces["reset"].inline(program, [potential, spikes])
    updated = traces["update_stats"].inline(
        program, [*(program.input(f"stat{k}") for k in range(stats)), spikes])
    program.output("spikes", spikes)
    program.output("membrane", program.as_float(membrane))
    program.output("kept", potential if keeps_potential else spikes)
    for k in range(stats):
        program.output(f"stat{k}", program.as_float(updated[k]))
    return program


def _forward_kernels(traces: dict[str, MethodTrace], stats: int,
                     keeps_potential: bool) -> tuple[Kernel, Kernel]:
    program = _forward_program(traces, stats, keeps_potential)
    states = {"membrane", *(f"stat{k}" for k in range(stats))}
    recording = program.pruned({"spikes", "kept", *states}, states)
    evaluating = program.pruned({"spikes", "membrane"}, {"membrane"})
    values = Slot(ROWS, "values", input="current", output="spikes")
    membrane = Slot(STATE, "membrane", input="membrane", output="membrane")
    kept = Slot(ROWS, "kept", output="kept", boolean=not keeps_potential)
    sums = [Slot(STATE, f"stat{k}", input=f"stat{k}", output=f"stat{k}") for k in range(stats)]
    forward = Kernel("forward", recording, (values, kept, membrane, *sums,
                                            *_operand_slots(recording, traces)))
    evaluation = Kernel("evaluation", evaluating,
                        (values, membrane, *_operand_slots(evaluating, traces)))
    return forward, evaluation


def _gradient(program: Program, trace: MethodTrace, inputs: list[Value],
              cotangent: Value) -> dict[str, Value]:
    """Emit the gradient of ``trace``'s trainable operands, by ``inputs`` and ``cotangent``."""
    wrt = [k for k, trains in enumerate(trace.trainable) if trains]
    if not wrt:
        return {}
    shape, dtype = trace.shape, trace.dtype
    metas = [meta_like(shape, torch.bool if v in program.boolean else dtype) for v in inputs]
    graph = trace_gradient(trace, metas, wrt)
    placeholders = [n for n in graph.graph.nodes if n.op == "placeholder"]
    operands = [program.input(trace.operand_name(k)) for k in range(len(trace.operands))]
    env = dict(zip(placeholders, [*inputs, *operands, cotangent]))
    grads = emit_graph(program, graph, env, {}, f"the gradient of {trace.qualified}", shape,
                       dtype)
    return {trace.operand_name(k): program.as_float(g) for k, g in zip(wrt, grads)}


def _previous_membrane(program: Program, traces: dict[str, MethodTrace]) -> Value:
    """``m_{t-1}``: the reset of the kept ``u_{t-1}``, or the chunk's first membrane at t = 0."""
    previous = program.input("previous")
    (spikes,) = traces["fire"].inline(program, [previous])
    (membrane,) = traces["reset"].inline(program, [previous, spikes])
    return program.emit("where", program.input("first", boolean=True), program.input("start"),
                        membrane)


def _backward_program(traces: dict[str, MethodTrace], keeps_potential: bool,
                      reads_potential: bool) -> Program:
    program = Program()
    kept = program.input("kept", boolean=not keeps_potential)
    if keeps_potential and not reads_potential:  # kept u for the parameters; the step reads s
        (step_kept,) = traces["fire"].inline(program, [kept])
    else:
        step_kept = kept
    later = program.input("delta")
    (delta,) = traces["backward_step"].inline(
        program, [program.input("grad"), later, step_kept, program.input("scale")])
    delta = program.as_float(delta)
    program.output("delta", delta)
    if keeps_potential:
        (spikes,) = traces["fire"].inline(program, [kept])
        grads = _gradient(program, traces["reset"], [kept, spikes], later)
        if any(traces["charge"].trainable):
            charged = [_previous_membrane(program, traces), program.input("current")]
            for name, grad in _gradient(program, traces["charge"], charged, delta).items():
                grads[name] = program.emit("add", grads[name], grad) if name in grads else grad
        for name, grad in grads.items():
            program.output(f"grad:{name}", grad)
    return program.pruned(set(program.outputs), {"delta"})


def _backward_kernel(traces: dict[str, MethodTrace], keeps_potential: bool,
                     reads_potential: bool) -> Kernel:
    program = _backward_program(traces, keeps_potential, reads_potential)
    slots = [Slot(ROWS, "grad", input="grad"),
             Slot(ROWS, "kept", input="kept", boolean=not keeps_potential),
             Slot(STATE, "delta", input="delta", output="delta"),
             Slot(ROWS, "grad_current", output="delta"),
             Slot(NEURONS, "scale", input="scale")]
    optional = {"previous": Slot(ROWS_BEFORE, "kept", input="previous"),
                "start": Slot(NEURONS, "start", input="start"),
                "current": Slot(ROWS, "current", input="current"),
                "first": Slot(FIRST, input="first")}
    slots += optional.values()
    slots = [slot for slot in slots if slot.output or slot.input in program.inputs]
    slots += _operand_slots(program, traces)
    slots += [Slot(SUM, name, output=name) for name in program.outputs if name != "delta"]
    return Kernel("backward", program, tuple(slots), reverse=True)


def _step_metas(neuron: nn.Module, shape: torch.Size, dtype: torch.dtype
                ) -> tuple[int, dict[str, list[Tensor]]]:
    """The number of spike statistics, and the meta inputs each method is traced with."""
    def value() -> Tensor:
        return meta_like(shape, dtype)

    spikes = meta_like(shape, torch.bool)
    stats = neuron.spike_stats(value())
    for stat in stats:
        if stat.shape != shape or stat.dtype != dtype:
            raise NotFusable(f"{type(neuron).__name__}.spike_stats gives a {stat.dtype} tensor "
                             f"of shape {tuple(stat.shape)}, not one {dtype} per neuron")
    kept = value() if neuron.keeps_potential else meta_like(shape, torch.bool)
    return len(stats), {"charge": [value(), value()], "fire": [value()],
                        "reset": [value(), spikes],
                        "update_stats": [*(value() for _ in stats), spikes],
                        "backward_step": [value(), value(), kept, value()]}


def build(neuron: nn.Module, shape: torch.Size, dtype: torch.dtype) -> NeuronScan:
    """Trace ``neuron`` for steps of ``shape`` in ``dtype`` and assemble its kernels.

    Raises:
        NotFusable: a method cannot be traced into an elementwise program, with the method's
            name and why.
    """
    stats, metas = _step_metas(neuron, shape, dtype)
    traces = {method: trace_method(neuron, method, inputs, shape, dtype)
              for method, inputs in metas.items()}
    trains = any(any(traces[m].trainable) for m in ("charge", "reset"))
    keeps_potential = bool(neuron.keeps_potential) or trains
    forward, evaluation = _forward_kernels(traces, stats, keeps_potential)
    backward = _backward_kernel(traces, keeps_potential, bool(neuron.keeps_potential))
    inputs = backward.program.inputs
    trainable = tuple(n.removeprefix("grad:") for n in backward.program.outputs if n != "delta")
    return NeuronScan(type(neuron).__name__, dtype, traces,
                      {"forward": forward, "evaluation": evaluation, "backward": backward},
                      keeps_potential, trainable,
                      frozenset(name for name in ("start", "current") if name in inputs))


def build_integrator(neuron: nn.Module, shape: torch.Size, dtype: torch.dtype) -> NeuronScan:
    """The output integrator's kernel ``integrate``: ``M <- charge(M, I_t)`` over the steps."""
    charge = trace_method(neuron, "charge", [meta_like(shape, dtype), meta_like(shape, dtype)],
                     shape, dtype)
    program = Program()
    (membrane,) = charge.inline(program, [program.input("membrane"), program.input("current")])
    program.output("membrane", program.as_float(membrane))
    slots = (Slot(ROWS, "current", input="current"),
             Slot(STATE, "membrane", input="membrane", output="membrane"),
             *_operand_slots(program, {"charge": charge}))
    return NeuronScan(type(neuron).__name__, dtype, {"charge": charge},
                      {"integrate": Kernel("integrate", program, slots)})


_PLAIN = (bool, int, float, str, type(None), tuple)


def neuron_key(neuron: nn.Module) -> Hashable:
    """What a neuron's trace depends on besides the step: its class and methods (an edited
    method is a new trace), the plain values and functions it holds, its tensors' shapes and
    whether they train. Computed at every call, so kept cheap."""
    klass = type(neuron)
    attributes = tuple([(k, v) for k, v in neuron.__dict__.items()
                        if k[0] != "_" and (isinstance(v, _PLAIN) or callable(v))])
    tensors = tuple([(name, t.shape, t.dtype, t.requires_grad)
                     for held in (neuron._parameters, neuron._buffers)
                     for name, t in held.items() if t is not None])
    methods = tuple([getattr(klass, m, None) for m in METHODS])
    return klass, methods, attributes, tensors


_SCANS: dict[Hashable, NeuronScan | NotFusable] = {}
# What neuron_refusal has just found, for the table's call that follows it at once: the
# neuron's key (a key costs as much as the rest of a small layer's dispatch; a pooling neuron
# is checked on its input and runs on the pooled steps) and the scan for the steps it checked.
_just_checked: list[tuple[nn.Module, Hashable, torch.Size, torch.dtype, NeuronScan]] = []


def neuron_scan(neuron: nn.Module, like: Tensor) -> NeuronScan:
    """The kernels of ``neuron`` (a spiking neuron, or the output integrator: one without
    ``fire``) for steps shaped and typed like ``like`` ``[B, ...]``, traced once and cached (so
    is a refusal).

    Raises:
        NotFusable: as :func:`build`.
    """
    own_key = None
    if _just_checked:
        (checked, own_key, shape, dtype, scan), = _just_checked
        _just_checked.clear()
        if checked is not neuron:
            own_key = None
        elif shape == like.shape and dtype == like.dtype:
            return scan
    if own_key is None:
        own_key = neuron_key(neuron)
    return _cached_scan(neuron, own_key, like.shape, like.dtype)


def _cached_scan(neuron: nn.Module, own_key: Hashable, shape: torch.Size,
                 dtype: torch.dtype) -> NeuronScan:
    key = (*own_key, shape, dtype)
    scan = _SCANS.get(key)
    if scan is None:
        make = build if hasattr(neuron, "fire") else build_integrator
        try:
            scan = make(neuron, shape, dtype)
        except NotFusable as reason:
            scan = reason
        _SCANS[key] = scan
    if isinstance(scan, NotFusable):
        raise scan
    return scan


def neuron_refusal(neuron: nn.Module, like: Tensor) -> str | None:
    """Why the generated scans cannot run ``neuron`` on currents like ``like`` ``[T, B, ...]``
    (a method that cannot be traced), or None: the fused tables' ``neuron_refusal``."""
    _just_checked.clear()
    own_key = neuron_key(neuron)
    step_shape = like.shape[1:]
    try:
        scan = _cached_scan(neuron, own_key, step_shape, like.dtype)
    except NotFusable as reason:
        return f"it cannot generate this neuron's scans: {reason}"
    _just_checked.append((neuron, own_key, step_shape, like.dtype, scan))
    return None
