"""The elementwise programs that the fused scans are generated from.

A :class:`Program` is one time step of one neuron, as straight-line code on numbers: named
inputs (per neuron, or one number broadcast to every neuron), constants, instructions in
single-assignment form, and named outputs. :mod:`.trace` builds programs from a neuron's own
methods; :mod:`.c_source` and :mod:`.triton_source` turn them into the loop over steps and
neurons. Every value is either a float of the scan's dtype or a boolean.

``round32`` rounds a float to the nearest float32 and back: a float64 scan computes the
float32 values a method makes (``threshold * spikes`` with boolean spikes is float32 in
PyTorch) in float64 and rounds them, which for ``+ - * /`` and ``sqrt`` of float32 operands
is the float32 result exactly.

The instructions (``ARITY``) are the elementwise operations whose rounding PyTorch defines the
same way on every element: each emitter computes them with the float operations PyTorch's CPU
kernels use, so that a scan gives the bits of the neuron's methods (the transcendental
functions, whose libraries differ, within a unit in the last place).
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ARITY", "BOOLEAN_OPS", "Instruction", "Program", "Value"]

# operation -> number of arguments
ARITY = {
    "add": 2, "sub": 2, "mul": 2, "div": 2, "maximum": 2, "minimum": 2,
    "neg": 1, "abs": 1, "reciprocal": 1, "sqrt": 1, "exp": 1, "log": 1, "sigmoid": 1,
    "tanh": 1, "sign": 1,
    "gt": 2, "ge": 2, "lt": 2, "le": 2, "eq": 2, "ne": 2,
    "and": 2, "or": 2, "xor": 2, "not": 1,
    "where": 3, "to_float": 1, "to_bool": 1, "round32": 1,
}
# operations whose result is a boolean
BOOLEAN_OPS = frozenset({"gt", "ge", "lt", "le", "eq", "ne", "and", "or", "xor", "not",
                         "to_bool"})


class Value(int):
    """The id of a value in a :class:`Program` (an ``int``, told apart from a Python number)."""


@dataclass(frozen=True)
class Instruction:
    """``values[result] = op(values[args...])``."""

    result: int
    op: str
    args: tuple[int, ...]


@dataclass
class Program:
    """One step of a scan as straight-line code.

    Attributes:
        inputs: input name -> value id; at run time each input is an array over the neurons
            or one number for all (the emitters are told which).
        constants: value id -> number, cast to the scan's dtype (as PyTorch casts a Python
            number in an operation with a tensor).
        instructions: in order of evaluation.
        outputs: output name -> value id.
        boolean: the value ids that are booleans; every other value is a float.
    """

    inputs: dict[str, int] = field(default_factory=dict)
    constants: dict[int, float] = field(default_factory=dict)
    instructions: list[Instruction] = field(default_factory=list)
    outputs: dict[str, int] = field(default_factory=dict)
    boolean: set[int] = field(default_factory=set)
    _count: int = 0

    def _new(self, boolean: bool) -> Value:
        self._count += 1
        if boolean:
            self.boolean.add(self._count)
        return Value(self._count)

    def input(self, name: str, boolean: bool = False) -> int:
        """The value of input ``name`` (declared on first use)."""
        if name not in self.inputs:
            self.inputs[name] = self._new(boolean)
        return self.inputs[name]

    def constant(self, number: float) -> int:
        """A value holding ``number`` (one per distinct number)."""
        for value, held in self.constants.items():
            if held == number and str(held) == str(number):  # 0.0 and -0.0 stay apart
                return value
        value = self._new(False)
        self.constants[value] = float(number)
        return value

    def emit(self, op: str, *args: int) -> int:
        """The value of ``op(args)``, with booleans converted where a float is expected."""
        if len(args) != ARITY[op]:
            raise ValueError(f"{op} takes {ARITY[op]} arguments, not {len(args)}")
        if op in ("and", "or", "xor", "not"):
            args = tuple(self.as_bool(a) for a in args)
        elif op == "where":
            args = (self.as_bool(args[0]), *self._same_kind(args[1:]))
        elif op not in ("to_float", "to_bool", "round32"):
            args = self._same_kind(args)
        result = self._new(op in BOOLEAN_OPS or (op == "where" and args[1] in self.boolean))
        self.instructions.append(Instruction(result, op, args))
        return result

    def _same_kind(self, args: tuple[int, ...]) -> tuple[int, ...]:
        """Booleans among float arguments become 0 or 1, as in PyTorch's type promotion."""
        if all(a in self.boolean for a in args):
            return args
        return tuple(self.as_float(a) for a in args)

    def as_float(self, value: int) -> int:
        return self.emit("to_float", value) if value in self.boolean else value

    def as_bool(self, value: int) -> int:
        return value if value in self.boolean else self.emit("to_bool", value)

    def output(self, name: str, value: int) -> None:
        self.outputs[name] = value

    def pruned(self, keep: set[str], inputs: set[str] = frozenset()) -> Program:
        """A copy computing only the outputs named in ``keep`` from the inputs they need, and
        the ``inputs`` named (a state carried between steps, read or not)."""
        outputs = {name: v for name, v in self.outputs.items() if name in keep}
        needed = set(outputs.values()) | {v for n, v in self.inputs.items() if n in inputs}
        instructions = []
        for instruction in reversed(self.instructions):
            if instruction.result in needed:
                instructions.append(instruction)
                needed.update(instruction.args)
        return Program({n: v for n, v in self.inputs.items() if v in needed},
                       {v: c for v, c in self.constants.items() if v in needed},
                       instructions[::-1], outputs, set(self.boolean), self._count)
