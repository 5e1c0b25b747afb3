"""ATen operations in elementwise programs: how each operation of a traced neuron method becomes
instructions of a :class:`~.program.Program`, or why it cannot.

Each translator gets the program, the node's arguments with every traced value already replaced
by its value id (Python numbers stay numbers) and the node's keyword arguments, and returns the
value id of the result. The set is the elementwise operations that neuron steps are written with;
anything else (a reduction, an indexing, a random draw) raises :class:`NotFusable` naming it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .program import Program, Value

__all__ = ["NotFusable", "translate"]

aten = torch.ops.aten


class NotFusable(Exception):
    """A neuron method that the fused scans cannot be generated from, and why: the message
    names the method (``LIFNeuron.reset calls ...``)."""


def _value(program: Program, arg: Any) -> Value:
    """A value for an argument: a traced value, or a Python number made a constant."""
    if isinstance(arg, Value):
        return arg
    if isinstance(arg, bool):
        return program.as_bool(program.constant(float(arg)))
    if isinstance(arg, (int, float)):
        return program.constant(float(arg))
    raise NotFusable(f"passes {arg!r}, neither a tensor nor a number, to an operation")


def _unit_alpha(kwargs: dict) -> None:
    if kwargs.get("alpha", 1) != 1:
        raise NotFusable("uses add or sub with alpha other than 1 (PyTorch fuses that multiply-add)")


def _binary(op: str) -> Callable:
    def translate_binary(program: Program, args: tuple, kwargs: dict) -> int:
        if op in ("add", "sub"):
            _unit_alpha(kwargs)
        return program.emit(op, _value(program, args[0]), _value(program, args[1]))
    return translate_binary


def _unary(op: str) -> Callable:
    def translate_unary(program: Program, args: tuple, kwargs: dict) -> int:
        return program.emit(op, _value(program, args[0]))
    return translate_unary


def _rsub(program: Program, args: tuple, kwargs: dict) -> int:
    _unit_alpha(kwargs)
    return program.emit("sub", _value(program, args[1]), _value(program, args[0]))


def _div(program: Program, args: tuple, kwargs: dict) -> int:
    if kwargs.get("rounding_mode") is not None:
        raise NotFusable(f"divides with rounding_mode={kwargs['rounding_mode']!r}")
    return program.emit("div", _value(program, args[0]), _value(program, args[1]))


def _power(program: Program, args: tuple, kwargs: dict) -> int:
    """``x ** e`` as PyTorch's CPU kernel computes the exponents it special-cases (so the bits
    agree); other exponents call ``pow``, whose libraries differ, and are refused."""
    x, exponent = _value(program, args[0]), args[1]
    if exponent == 1:
        return x
    if exponent == 0.5:
        return program.emit("sqrt", x)
    square = program.emit("mul", x, x) if exponent in (2, 3, -2) else None
    if exponent == 2:
        return square
    if exponent == 3:
        return program.emit("mul", square, x)
    if exponent == -1:
        return program.emit("reciprocal", x)
    if exponent == -2:
        return program.emit("reciprocal", square)
    raise NotFusable(f"computes x ** {exponent!r} (the kernels take the exponents 0.5, 1, 2, "
                     "3, -1 and -2, which PyTorch computes exactly)")


def _clamp(program: Program, args: tuple, kwargs: dict) -> int:
    low = args[1] if len(args) > 1 else kwargs.get("min")
    high = args[2] if len(args) > 2 else kwargs.get("max")
    result = _value(program, args[0])
    if low is not None:
        result = program.emit("maximum", result, _value(program, low))
    if high is not None:
        result = program.emit("minimum", result, _value(program, high))
    return result


def _where(program: Program, args: tuple, kwargs: dict) -> int:
    return program.emit("where", *(_value(program, a) for a in args))


def _masked_fill(program: Program, args: tuple, kwargs: dict) -> int:
    return program.emit("where", _value(program, args[1]), _value(program, args[2]),
                        _value(program, args[0]))


def _cast(program: Program, args: tuple, kwargs: dict) -> int:
    extra = set(kwargs) - {"dtype", "layout", "device", "memory_format", "pin_memory"}
    if extra:
        raise NotFusable(f"copies a tensor with {sorted(extra)}")
    value = _value(program, args[0])
    dtype = kwargs.get("dtype")
    if dtype == torch.bool:
        return program.as_bool(value)
    return program.as_float(value) if dtype is not None else value


def _same(program: Program, args: tuple, kwargs: dict) -> int:
    return _value(program, args[0])


def _filled(fill: float | None) -> Callable:
    """``full_like``, ``zeros_like``, ``ones_like``, ``scalar_tensor``: a constant."""
    def translate_fill(program: Program, args: tuple, kwargs: dict) -> int:
        number = fill if fill is not None else args[-1]
        value = program.constant(float(number))
        return program.as_bool(value) if kwargs.get("dtype") == torch.bool else value
    return translate_fill


TRANSLATORS: dict[Any, Callable[[Program, tuple, dict], int]] = {
    aten.add: _binary("add"), aten.sub: _binary("sub"), aten.mul: _binary("mul"),
    aten.div: _div, aten.rsub: _rsub, aten.maximum: _binary("maximum"),
    aten.minimum: _binary("minimum"), aten.pow: _power, aten.clamp: _clamp,
    aten.clamp_min: lambda p, a, k: _clamp(p, (a[0], a[1], None), {}),
    aten.clamp_max: lambda p, a, k: _clamp(p, (a[0], None, a[1]), {}),
    aten.neg: _unary("neg"), aten.abs: _unary("abs"), aten.reciprocal: _unary("reciprocal"),
    aten.sqrt: _unary("sqrt"), aten.exp: _unary("exp"), aten.log: _unary("log"),
    aten.sigmoid: _unary("sigmoid"), aten.tanh: _unary("tanh"), aten.sign: _unary("sign"),
    aten.gt: _binary("gt"), aten.ge: _binary("ge"), aten.lt: _binary("lt"),
    aten.le: _binary("le"), aten.eq: _binary("eq"), aten.ne: _binary("ne"),
    aten.logical_and: _binary("and"), aten.logical_or: _binary("or"),
    aten.logical_xor: _binary("xor"), aten.logical_not: _unary("not"),
    aten.bitwise_and: _binary("and"), aten.bitwise_or: _binary("or"),
    aten.bitwise_xor: _binary("xor"), aten.bitwise_not: _unary("not"),
    aten.where: _where, aten.masked_fill: _masked_fill, aten._to_copy: _cast,
    aten.clone: _same, aten.alias: _same, aten.detach: _same, aten.lift_fresh_copy: _same,
    aten.scalar_tensor: _filled(None), aten.full_like: _filled(None),
    aten.zeros_like: _filled(0.0), aten.ones_like: _filled(1.0),
}


def translate(program: Program, target: Any, args: tuple, kwargs: dict) -> int:
    """The value id of ``target(*args, **kwargs)`` emitted into ``program``."""
    translator = TRANSLATORS.get(getattr(target, "overloadpacket", target))
    if translator is None:
        raise NotFusable(f"calls {target}, which the generated kernels do not implement")
    return translator(program, args, kwargs)
