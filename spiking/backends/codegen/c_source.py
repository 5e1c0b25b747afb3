"""C source of scan kernels, for the ``cpu`` backend.

A kernel becomes one exported function ``<name>(steps, neurons, arrays, threads)``:
OpenMP threads take contiguous ranges of neurons, each range is walked in blocks of
``BLOCK`` neurons, and each block through every step of the chunk with one loop over its
neurons per step, which the compiler vectorises (``-fno-trapping-math`` lets it turn the
selects into blends). What a neuron carries between steps is re-read from its ``[neurons]``
array (in the L1 cache) or, for sums, from a block buffer. Every operation is the one PyTorch's
CPU kernels compute for the same ATen operation, in the program's order, and the build turns
off fused multiply-adds (``-ffp-contract=off``), so the results are PyTorch's bits.

The program's constants (a neuron's threshold and leak, the numbers in its methods) are written
into the source as exact literals rather than passed at run time: the compiler folds what it
can prove from them (``where(s, 0, u) * leak`` becomes one mask of ``u * leak``, 12 % faster
on LeNet's first layer than the same select with the constants loaded from memory). A neuron
with other numbers is another source, compiled once and cached like the first.
"""
from __future__ import annotations

import math

import torch

from .kernel import FIRST, NEURONS, NUMBER, ROWS, ROWS_BEFORE, STATE, SUM, Kernel, Slot
from .program import Instruction, Program

__all__ = ["c_source"]

_TYPES = {torch.float32: ("float", "f"), torch.float64: ("double", "")}

# Neurons walked through the steps together. Smaller blocks keep what a step streams through
# (currents, kept spikes, membrane, statistics) within the L1 cache: on LeNet's first LIF layer
# (4 steps, 32 images, float32, 2 cores) the recording forward took 0.62 ms at 128 against
# 1.14 ms at 1024 and 0.60 ms at 64; the evaluation 0.42 ms against 0.48 ms; the backward the
# same at either.
BLOCK = 128

_PRELUDE = """\
#include <math.h>
#include <stdint.h>

enum {{ BLOCK = {block} }};
typedef {real} T;
"""

_LAUNCH = """\
void {name}(int64_t steps, int64_t neurons, void *const *arrays, int threads) {{
    threads = threads < 1 ? 1 : threads;
#pragma omp parallel for num_threads(threads)
    for (int k = 0; k < threads; ++k)
        {name}_range(steps, neurons, arrays, neurons * k / threads, neurons * (k + 1) / threads);
}}
"""


def _expression(instruction: Instruction, program: Program, suffix: str) -> str:
    """The C expression of one instruction (``v<k>`` names value k)."""
    a = [f"v{arg}" for arg in instruction.args]
    op = instruction.op
    binary = {"add": "+", "sub": "-", "mul": "*", "div": "/", "gt": ">", "ge": ">=",
              "lt": "<", "le": "<=", "eq": "==", "ne": "!=", "and": "&", "or": "|", "xor": "^"}
    if op in binary:
        return f"{a[0]} {binary[op]} {a[1]}"
    calls = {"abs": "fabs", "sqrt": "sqrt", "exp": "exp", "log": "log", "tanh": "tanh"}
    if op in calls:
        return f"{calls[op]}{suffix}({a[0]})"
    forms = {
        "neg": "-{0}", "reciprocal": "(T)1 / {0}", "not": "!{0}",
        "sigmoid": "(T)1 / ((T)1 + exp{s}(-{0}))", "sign": "(T)(({0} > 0) - ({0} < 0))",
        # NaN propagates, as in torch.maximum and torch.minimum
        "maximum": "({0} != {0} || {0} > {1}) ? {0} : {1}",
        "minimum": "({0} != {0} || {0} < {1}) ? {0} : {1}",
        "where": "{0} ? {1} : {2}", "to_float": "(T){0}", "to_bool": "{0} != (T)0",
        "round32": "(T)(float){0}",
    }
    return forms[op].format(*a, s=suffix)


def _literal(number: float, dtype: torch.dtype) -> str:
    """``number`` as PyTorch casts it to ``dtype``, written exactly as a C constant."""
    if math.isnan(number):
        return "(T)NAN"
    if math.isinf(number):
        return "(T)INFINITY" if number > 0 else "-(T)INFINITY"
    return f"(T){torch.tensor(number, dtype=dtype).item().hex()}"


def _type(slot: Slot) -> str:
    return ("" if slot.output else "const ") + ("uint8_t" if slot.boolean else "T")


def _base(slot: Slot, index: int) -> str:
    """The declaration of slot ``index``'s array, read from ``arrays`` once: a store of bytes
    may alias anything, so a pointer re-read from ``arrays`` would block vectorisation."""
    return f"{_type(slot)} *const p{index} = ({_type(slot)} *)arrays[{index}];"


def _pointer(slot: Slot, index: int) -> str:
    """The declaration of slot ``index``'s pointer into the current block (and row)."""
    row = {ROWS: "t * neurons + ", ROWS_BEFORE: "(t > 0 ? t - 1 : 0) * neurons + "}
    return f"{_type(slot)} *restrict a{index} = p{index} + {row.get(slot.kind, '')}b0;"


def _body(kernel: Kernel, suffix: str) -> list[str]:
    """The statements of the loop over a block's neurons at step t."""
    program = kernel.program
    lines = []
    for index, slot in enumerate(kernel.arrays()):
        if slot.input is None or slot.kind == NUMBER:
            continue
        value = program.inputs[slot.input]
        source = f"b{index}[i]" if slot.boolean else f"a{index}[i]"
        kind = "int" if value in program.boolean else "T"
        lines.append(f"const {kind} v{value} = {source};")
    for instruction in program.instructions:
        kind = "int" if instruction.result in program.boolean else "T"
        lines.append(f"const {kind} v{instruction.result} = "
                     f"{_expression(instruction, program, suffix)};")
    for index, slot in enumerate(kernel.arrays()):
        if slot.output is None:
            continue
        value = program.outputs[slot.output]
        if slot.kind == SUM:
            lines.append(f"s{index}[i] += v{value};")
        elif slot.boolean:
            lines.append(f"b{index}[i] = v{value};")
        elif value not in program.boolean:
            lines.append(f"a{index}[i] = v{value};")
        else:
            lines.append(f"a{index}[i] = v{value} ? (T)1 : (T)0;")
    return lines


def _range_function(kernel: Kernel, dtype: torch.dtype, suffix: str) -> list[str]:
    """``<name>_range``: the kernel over the neurons ``[begin, end)``."""
    program, arrays = kernel.program, kernel.arrays()
    lines = [f"static void {kernel.name}_range(int64_t steps, int64_t neurons, "
             "void *const *arrays, int64_t begin, int64_t end) {"]
    lines += [f"    const T v{value} = {_literal(number, dtype)};"
              for value, number in program.constants.items()]
    for index, slot in enumerate(arrays):
        if slot.kind == NUMBER:
            lines.append(f"    const T v{program.inputs[slot.input]} = "
                         f"((const T *)arrays[{index}])[0];")
        elif slot.kind != SUM:
            lines.append("    " + _base(slot, index))
    lines.append("    for (int64_t b0 = begin; b0 < end; b0 += BLOCK) {")
    lines.append("        const int64_t len = end - b0 < BLOCK ? end - b0 : BLOCK;")
    for index, slot in enumerate(arrays):
        if slot.kind in (STATE, NEURONS):
            lines.append("        " + _pointer(slot, index))
        elif slot.kind == SUM:
            lines.append(f"        T s{index}[BLOCK];")
            lines.append(f"        for (int64_t i = 0; i < len; ++i) s{index}[i] = 0;")
    lines.append("        for (int64_t step = 0; step < steps; ++step) {")
    lines.append("            const int64_t t = " + ("steps - 1 - step;" if kernel.reverse
                                                     else "step;"))
    for index, slot in enumerate(arrays):
        if slot.kind in (ROWS, ROWS_BEFORE):
            lines.append("            " + _pointer(slot, index))
    for slot in kernel.slots:
        if slot.kind == FIRST:
            lines.append(f"            const int v{program.inputs[slot.input]} = t == 0;")
    staged = [(index, slot) for index, slot in enumerate(arrays) if slot.boolean]
    for index, slot in staged:
        lines.append(f"            int32_t b{index}[BLOCK];")
        if slot.input:
            lines.append(f"            for (int64_t i = 0; i < len; ++i) b{index}[i] = a{index}[i];")
    lines.append("            for (int64_t i = 0; i < len; ++i) {")
    lines += ["                " + line for line in _body(kernel, suffix)]
    lines.append("            }")
    for index, slot in staged:
        if slot.output:
            lines.append(f"            for (int64_t i = 0; i < len; ++i) "
                         f"a{index}[i] = (uint8_t)b{index}[i];")
    lines.append("        }")
    for index, slot in enumerate(arrays):
        if slot.kind == SUM:
            lines.append(f"        for (int64_t i = 0; i < len; ++i) "
                         f"((T *)arrays[{index}])[b0 + i] = s{index}[i];")
    lines += ["    }", "}"]
    return lines


def c_source(kernels: list[Kernel], dtype: torch.dtype, prefix: str) -> str:
    """A C translation unit defining ``<prefix>_<kernel.name>`` for each of ``kernels``."""
    real, suffix = _TYPES[dtype]
    parts = [_PRELUDE.format(real=real, block=BLOCK)]
    for kernel in kernels:
        named = Kernel(f"{prefix}_{kernel.name}", kernel.program, kernel.slots, kernel.reverse)
        parts.append("\n".join(_range_function(named, dtype, suffix)) + "\n")
        parts.append(_LAUNCH.format(name=named.name))
    return "\n".join(parts)
