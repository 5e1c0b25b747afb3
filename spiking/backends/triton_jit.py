"""The hand-written Triton kernel of the ``triton`` backend: the packing of a synapse's input
spikes (:mod:`.triton_kernels` launches it; the neuron scans are generated from the neurons'
methods by :mod:`.codegen`).

Imported only when the ``triton`` backend first runs: ``triton.jit`` reads ``TRITON_INTERPRET``
when it decorates, so a test that sets it before then runs this kernel on CPU tensors. Offsets
are 64-bit: a tensor may hold more than 2^31 values.
"""
from __future__ import annotations

import triton
import triton.language as tl

# Whether the kernel below is the interpreter's (CPU tensors) or compiled ones (CUDA).
INTERPRETED = bool(triton.knobs.runtime.interpret)


@triton.jit
def pack_spikes(x, codes, magnitudes, total, BLOCK: tl.constexpr):
    """``codes = sign(x)`` as int8, and into ``magnitudes`` (int64, ``[max, min]``) the largest
    and smallest ``|x|`` over the nonzero x, as the bits of the float: the codes are exact,
    ``x == codes * c``, when both are the same finite c. Non-negative floats order as their
    bits, so integer atomics give the float max and min (a NaN's bits exceed infinity's)."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < total
    value = tl.load(x + offsets, mask=inside, other=0)
    code = (value > 0).to(tl.int8) - (value < 0).to(tl.int8)
    tl.store(codes + offsets, code, mask=inside)
    if value.dtype == tl.float64:
        bits = tl.abs(value).to(tl.int64, bitcast=True)
    else:
        bits = tl.abs(value).to(tl.int32, bitcast=True).to(tl.int64)
    nonzero = value != 0
    largest = tl.max(tl.where(nonzero, bits, 0), axis=0)
    smallest = tl.min(tl.where(nonzero, bits, 0x7FFFFFFFFFFFFFFF), axis=0)
    tl.atomic_max(magnitudes, largest)
    tl.atomic_min(magnitudes + 1, smallest)
