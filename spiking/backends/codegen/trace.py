"""Tracing one neuron method into an elementwise program.

A method (``charge``, ``fire``, ``reset``, ``update_stats``, ``backward_step``) is called once
on tensors of the ``meta`` device (shapes and dtypes, no data) under ``make_fx``, with the
neuron's own tensors (its parameters and buffers) as inputs too; the graph of ATen operations
it records splits in two:

- the **host** part, which reads only the neuron's tensors (``torch.sigmoid(self.w)``): PyTorch
  computes it once per call, exactly as the method would, and its results (``operands``) go to
  the kernel as inputs: one number, or one per neuron;
- the **step** part, which reads the step's tensors: it must be elementwise and becomes
  instructions of a :class:`~.program.Program`.

A method that cannot be traced so (data-dependent control flow, a reduction, an operation the
translator does not know) raises :class:`~.aten.NotFusable` with the method's name and why.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn
from torch.fx.experimental.proxy_tensor import make_fx

from .aten import NotFusable, translate
from .program import Program, Value

__all__ = ["MethodTrace", "emit_graph", "held_tensors", "meta_like", "trace_gradient",
           "trace_method"]


def held_tensors(neuron: nn.Module) -> dict[str, Tensor]:
    """The tensors a neuron's methods may read: its own parameters and buffers.

    Raises:
        NotFusable: it holds another tensor attribute (a copy would go stale), or modules.
    """
    if any(True for _ in neuron.children()):
        raise NotFusable("holds modules of its own")
    for name, value in vars(neuron).items():
        if isinstance(value, Tensor):
            raise NotFusable(f"holds the tensor {name!r} as a plain attribute: register it "
                             "(nn.Parameter or register_buffer) so that it moves with the module")
    return {**dict(neuron.named_parameters(recurse=False)),
            **dict(neuron.named_buffers(recurse=False))}


def meta_like(shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


def _holding(neuron: nn.Module, tensors: dict[str, Tensor]) -> nn.Module:
    """A shallow copy of ``neuron`` whose parameters and buffers are ``tensors``."""
    clone = copy.copy(neuron)
    names = set(neuron._parameters)
    clone._parameters = {k: v for k, v in tensors.items() if k in names}
    clone._buffers = {k: v for k, v in tensors.items() if k not in names}
    return clone


def _record(function: Callable, inputs: Sequence[Tensor], method: str,
            decompose: bool = False) -> fx.GraphModule:
    """``make_fx`` of ``function`` on ``inputs``, in-place updates made explicit copies."""
    table = torch._decomp.core_aten_decompositions() if decompose else None
    try:
        return make_fx(torch.func.functionalize(function), decomposition_table=table)(*inputs)
    except NotFusable:
        raise
    except Exception as error:  # the tracer met data-dependent control flow, or a foreign call
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise NotFusable(f"{method} cannot be traced: {type(error).__name__}: {reason[:160]}")


@dataclass
class MethodTrace:
    """One traced method of one neuron: its graph split into host part and step part.

    Attributes:
        method: the method's name.
        graph: the recorded graph; its placeholders are the step inputs, then the neuron's
            tensors (``tensor_names``).
        steps: how many placeholders are step inputs.
        host: for each graph node, whether it depends only on the neuron's tensors.
        operands: the host values the step part reads, in order: inputs ``<method>:<k>``.
        trainable: per operand, whether it depends on a tensor that requires a gradient.
        shape, dtype: the step's shape ``[B, ...]`` and the scan's dtype.
    """

    owner: str
    method: str
    graph: fx.GraphModule
    steps: int
    tensor_names: tuple[str, ...]
    host: dict[fx.Node, bool]
    operands: list[fx.Node]
    trainable: list[bool]
    shape: torch.Size
    dtype: torch.dtype

    @property
    def qualified(self) -> str:
        """``<class>.<method>``, for messages."""
        return f"{self.owner}.{self.method}"

    def operand_name(self, index: int) -> str:
        return f"{self.method}:{index}"

    def operand_shape(self, index: int) -> torch.Size:
        node = self.operands[index]
        if node.op == "get_attr":
            return getattr(self.graph, node.target).shape
        return node.meta["val"].shape

    def host_values(self, tensors: dict[str, Tensor]) -> list[Tensor]:
        """The operands computed from the neuron's ``tensors`` by PyTorch (differentiably)."""
        values = _run_host(self, [tensors[name] for name in self.tensor_names])
        return [value.to(self.dtype) for value in values]

    def inline(self, program: Program, inputs: Sequence[Value]) -> list[Value]:
        """Emit the step part into ``program`` with the step inputs ``inputs``; returns the
        method's outputs (for ``update_stats``: the updated statistics)."""
        placeholders = [n for n in self.graph.graph.nodes if n.op == "placeholder"]
        env: dict[fx.Node, Value] = dict(zip(placeholders[:self.steps], inputs))
        for index, node in enumerate(self.operands):
            env[node] = program.input(self.operand_name(index))
        return emit_graph(program, self.graph, env, self.host, self.qualified, self.shape,
                          self.dtype)

    def fragment(self) -> fx.GraphModule:
        """The step part alone, as a module of ``(step inputs..., operands...)``: what the
        gradient with respect to the operands is traced from."""
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        placeholders = [n for n in self.graph.graph.nodes if n.op == "placeholder"]
        for node in placeholders[:self.steps]:
            env[node] = graph.placeholder(node.name)
        for index, node in enumerate(self.operands):
            env[node] = graph.placeholder(f"operand_{index}")
        for node in self.graph.graph.nodes:
            if node in env or (node.op != "output" and self.host[node]):
                continue
            env[node] = graph.node_copy(node, lambda n: env[n])
        return fx.GraphModule(self.graph, graph)


def _check_step_value(node: fx.Node, method: str, shape: torch.Size,
                      dtype: torch.dtype) -> None:
    """A value computed from the step's tensors is one float or boolean per neuron."""
    value = node.meta.get("val")
    if not isinstance(value, Tensor):
        raise NotFusable(f"{method} computes {node.target}, which is not a tensor")
    if value.shape != shape:
        raise NotFusable(f"{method} computes {node.target} of shape {tuple(value.shape)} from "
                         f"a step of shape {tuple(shape)} (the kernels take elementwise steps)")
    if value.dtype not in (dtype, torch.bool) and not _rounded(value.dtype, dtype):
        raise NotFusable(f"{method} computes {node.target} in {value.dtype}, wider than the "
                         f"run's {dtype}")


def _rounded(value: torch.dtype, dtype: torch.dtype) -> bool:
    """Whether a value of dtype ``value`` is computed in ``dtype`` and rounded to float32."""
    return value == torch.float32 and dtype == torch.float64


def _float32(number: object) -> object:
    """A Python float as PyTorch casts it for a float32 operation."""
    if isinstance(number, float):
        return torch.tensor(number, dtype=torch.float32).item()
    return number


def emit_graph(program: Program, graph: fx.GraphModule, env: dict[fx.Node, Value],
               host: dict[fx.Node, bool], method: str, shape: torch.Size,
               dtype: torch.dtype) -> list[Value]:
    """Emit the nodes of ``graph`` that are not host work into ``program``, the values of its
    inputs given by ``env``; returns its outputs, or (a graph returning None, as
    ``update_stats``) the values its in-place copies left in its step inputs."""
    steps = [n for n in graph.graph.nodes if n.op == "placeholder" and n in env]
    updated = {n: env[n] for n in steps}
    for node in graph.graph.nodes:
        if node.op == "output":
            result = node.args[0]
            if result is None:
                return [updated[n] for n in steps]
            results = result if isinstance(result, (tuple, list)) else (result,)
            return [env[r] for r in results]
        if node in env or host.get(node, False):
            continue
        if node.target is torch.ops.aten.copy_.default:
            updated[node.args[0]] = env[node.args[1]]
            continue
        if node.all_input_nodes:  # not a constant
            _check_step_value(node, method, shape, dtype)
        args = fx.node.map_arg(node.args, lambda n: env[n])
        value = node.meta.get("val")
        narrow = isinstance(value, Tensor) and _rounded(value.dtype, dtype)
        if narrow:
            args = tuple(_float32(arg) for arg in args)
        try:
            env[node] = translate(program, node.target, args, dict(node.kwargs))
        except NotFusable as reason:
            raise NotFusable(f"{method} {reason}") from None
        if narrow and env[node] not in program.boolean:
            env[node] = program.emit("round32", env[node])
    raise AssertionError("a graph without output")


def _run_host(trace: MethodTrace, tensors: list[Tensor]) -> list[Tensor]:
    """Evaluate the host part on real tensors: the nodes that read only the neuron's tensors."""
    values: dict[fx.Node, object] = {}
    placeholders = [n for n in trace.graph.graph.nodes if n.op == "placeholder"]
    values.update(zip(placeholders[trace.steps:], tensors))
    for node in trace.graph.graph.nodes:
        if node in values or node.op in ("placeholder", "output") or not trace.host[node]:
            continue
        if node.op == "get_attr":
            values[node] = getattr(trace.graph, node.target)
            continue
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: values[n])
        values[node] = node.target(*args, **kwargs)
    return [values[node] for node in trace.operands]


def _classify(graph: fx.GraphModule, steps: int, trainable_inputs: list[bool]
              ) -> tuple[dict[fx.Node, bool], dict[fx.Node, bool]]:
    """Per node: whether it is host work (reads no step input), and whether it depends on a
    tensor that requires a gradient."""
    host: dict[fx.Node, bool] = {}
    trainable: dict[fx.Node, bool] = {}
    placeholders = [n for n in graph.graph.nodes if n.op == "placeholder"]
    for index, node in enumerate(placeholders):
        host[node] = index >= steps
        trainable[node] = index >= steps and trainable_inputs[index - steps]
    for node in graph.graph.nodes:
        if node.op == "placeholder":
            continue
        inputs = node.all_input_nodes
        host[node] = node.op == "get_attr" or (bool(inputs) and all(host[n] for n in inputs))
        trainable[node] = any(trainable[n] for n in inputs)
    return host, trainable


def _operands(graph: fx.GraphModule, host: dict[fx.Node, bool], method: str,
              shape: torch.Size) -> list[fx.Node]:
    """The host values that the step part reads, each a float that broadcasts to the step."""
    operands = []
    for node in graph.graph.nodes:
        if not host.get(node) or node.op == "output":
            continue
        if not any(not host[user] for user in node.users if user.op != "output"):
            continue
        value = (getattr(graph, node.target) if node.op == "get_attr"
                 else node.meta.get("val"))
        if not isinstance(value, Tensor) or not value.dtype.is_floating_point:
            raise NotFusable(f"{method} reads {node.target} of the neuron's tensors, which is "
                             "not a float tensor")
        if torch.broadcast_shapes(value.shape, shape) != shape:
            raise NotFusable(f"{method} reads a tensor of shape {tuple(value.shape)} that does "
                             f"not broadcast to the step's {tuple(shape)}")
        operands.append(node)
    return operands


def trace_method(neuron: nn.Module, method: str, step_inputs: Sequence[Tensor],
                 shape: torch.Size, dtype: torch.dtype) -> MethodTrace:
    """Trace ``neuron.<method>`` called on ``step_inputs`` (meta tensors; for
    ``update_stats`` the statistics, then the spikes)."""
    qualified = f"{type(neuron).__name__}.{method}"
    try:
        tensors = held_tensors(neuron)
    except NotFusable as reason:
        raise NotFusable(f"{type(neuron).__name__} {reason}") from None
    names = tuple(tensors)
    count = len(step_inputs)

    def call(*inputs: Tensor):
        clone = _holding(neuron, dict(zip(names, inputs[count:])))
        steps = inputs[:count]
        if method == "update_stats":
            return clone.update_stats(tuple(steps[:-1]), steps[-1])
        return getattr(clone, method)(*steps)

    metas = [t.detach().to("meta") for t in tensors.values()]
    graph = _record(call, [*step_inputs, *metas], qualified)
    host, trainable = _classify(graph, count, [t.requires_grad for t in tensors.values()])
    operands = _operands(graph, host, qualified, shape)
    for node in graph.graph.nodes:
        if node.target is torch.ops.aten.copy_.default and method != "update_stats":
            raise NotFusable(f"{qualified} changes its argument {node.args[0].name} in place")
    return MethodTrace(type(neuron).__name__, method, graph, count, names, host, operands,
                       [trainable[n] for n in operands], shape, dtype)


def trace_gradient(trace: MethodTrace, step_inputs: Sequence[Tensor],
                   wrt: Sequence[int]) -> fx.GraphModule:
    """The graph of the vector-Jacobian product of ``trace``'s step part with respect to its
    operands ``wrt``: ``(step inputs..., operands..., cotangent) -> gradients``, each operand
    given one value per neuron, so that the product stays elementwise."""
    fragment = trace.fragment()
    shape, dtype = trace.shape, trace.dtype
    count = len(step_inputs)

    def product(*inputs: Tensor) -> tuple[Tensor, ...]:
        steps, operands, cotangent = inputs[:count], list(inputs[count:-1]), inputs[-1]

        def of_operands(*chosen: Tensor) -> Tensor:
            for index, value in zip(wrt, chosen):
                operands[index] = value
            return fragment(*steps, *operands)

        _, pullback = torch.func.vjp(of_operands, *(operands[i] for i in wrt))
        return pullback(cotangent)

    operand_metas = [meta_like(shape, dtype) for _ in trace.operands]
    return _record(product, [*step_inputs, *operand_metas, meta_like(shape, dtype)],
                   f"the gradient of {trace.qualified}", decompose=True)
