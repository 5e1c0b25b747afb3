"""The Triton kernels of the ``triton`` backend (:mod:`.triton_kernels` launches them).

Imported only when the ``triton`` backend first runs: ``triton.jit`` reads ``TRITON_INTERPRET``
when it decorates, so a test that sets it before then runs these kernels on CPU tensors.

Each scan gives one program a block of neurons and walks it through all steps of a chunk with
the membrane (or delta) in registers: one launch per layer and chunk instead of a few per time
step. Every value is computed with the float operations of the neurons' own methods
(:mod:`spiking.neurons`), in the same order (the launcher turns off fused multiply-adds), so
both give identical bits. Row offsets are 64-bit: ``steps * neurons`` may pass 2^31.
"""
from __future__ import annotations

import triton
import triton.language as tl

# Whether the kernels below are the interpreter's (CPU tensors) or compiled ones (CUDA).
INTERPRETED = bool(triton.knobs.runtime.interpret)


@triton.jit(do_not_specialize=["steps", "neurons"])
def lif_scan(values, spikes, membrane, trace, count, constants, steps, neurons,
             HAS_SPIKES: tl.constexpr, HAS_SUMS: tl.constexpr, BLOCK: tl.constexpr):
    """``values`` ``[steps, neurons]``: currents in, spikes (0 or 1) out. Per step
    ``u = m + I``; spike where ``u > threshold``; ``m = 0`` there, else ``leak * u``; optional
    bool copy of the spikes and ``trace <- trace * leak + s``, ``count <- count + s``.
    ``constants`` holds ``(threshold, leak)`` in the values' dtype."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < neurons
    threshold = tl.load(constants)
    leak = tl.load(constants + 1)
    m = tl.load(membrane + offsets, mask=inside, other=0)
    if HAS_SUMS:
        lf = tl.load(trace + offsets, mask=inside, other=0)
        n = tl.load(count + offsets, mask=inside, other=0)
    row = offsets
    for _ in range(steps):
        u = m + tl.load(values + row, mask=inside, other=0)
        fired = u > threshold
        s = tl.where(fired, 1.0, 0.0).to(u.dtype)
        tl.store(values + row, s, mask=inside)
        if HAS_SPIKES:
            tl.store(spikes + row, fired, mask=inside)
        m = tl.where(fired, 0.0, u * leak).to(u.dtype)
        if HAS_SUMS:
            lf = lf * leak + s
            n = n + s
        row += neurons
    tl.store(membrane + offsets, m, mask=inside)
    if HAS_SUMS:
        tl.store(trace + offsets, lf, mask=inside)
        tl.store(count + offsets, n, mask=inside)


@triton.jit(do_not_specialize=["steps", "neurons"])
def gradient_scan(grad, spikes, scale, carry, out, steps, neurons,
                  SCALE_PER_NEURON: tl.constexpr, BLOCK: tl.constexpr):
    """Backwards in time over ``[steps, neurons]``: ``delta_t = scale * g_t`` where the neuron
    spiked, else ``delta_{t+1}``, from ``delta = carry``; ``scale`` per neuron or one number."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < neurons
    delta = tl.load(carry + offsets, mask=inside, other=0)
    if SCALE_PER_NEURON:
        factor = tl.load(scale + offsets, mask=inside, other=0)
    else:
        factor = tl.load(scale)
    row = (steps - 1).to(tl.int64) * neurons + offsets
    for _ in range(steps):
        g = factor * tl.load(grad + row, mask=inside, other=0)
        delta = tl.where(tl.load(spikes + row, mask=inside, other=0) != 0, g, delta)
        tl.store(out + row, delta, mask=inside)
        row -= neurons


@triton.jit(do_not_specialize=["steps", "neurons"])
def output_integrator(current, membrane, constants, steps, neurons, BLOCK: tl.constexpr):
    """``M <- leak * (M + I_t)`` over ``current`` ``[steps, neurons]`` from ``membrane``, which
    receives the last ``M``. ``constants`` holds ``leak`` in the currents' dtype."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < neurons
    leak = tl.load(constants)
    m = tl.load(membrane + offsets, mask=inside, other=0)
    row = offsets
    for _ in range(steps):
        m = leak * (m + tl.load(current + row, mask=inside, other=0))
        row += neurons
    tl.store(membrane + offsets, m, mask=inside)


@triton.jit(do_not_specialize=["steps", "neurons"])
def pooling_scan(image, values, spikes, membrane, constants, steps, neurons, image_step, height,
                 width, rows, cols, K: tl.constexpr, HAS_SPIKES: tl.constexpr,
                 BLOCK: tl.constexpr):
    """The pooling neuron's forward: each step's ``[planes, height, width]`` image (steps
    ``image_step`` values apart) pooled into ``neurons = planes * rows * cols`` IF neurons (the
    mean of each K x K window, summed row by row from 0 and divided by K * K, as
    ``F.avg_pool2d``), scanned as :func:`lif_scan` without leak; spikes into ``values``
    ``[steps, neurons]`` (and their bool copy). ``constants`` holds the threshold."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < neurons
    plane = offsets // (rows * cols)
    r = (offsets // cols) % rows
    c = offsets % cols
    corner = image + plane * height * width + r * K * width + c * K
    threshold = tl.load(constants)
    m = tl.load(membrane + offsets, mask=inside, other=0)
    row = offsets
    for _ in range(steps):
        acc = tl.zeros([BLOCK], dtype=m.dtype)
        for i in tl.static_range(K):
            for j in tl.static_range(K):
                acc += tl.load(corner + i * width + j, mask=inside, other=0)
        u = m + acc / (K * K)
        fired = u > threshold
        tl.store(values + row, tl.where(fired, 1.0, 0.0).to(u.dtype), mask=inside)
        if HAS_SPIKES:
            tl.store(spikes + row, fired, mask=inside)
        m = tl.where(fired, 0.0, u).to(u.dtype)
        corner += image_step
        row += neurons
    tl.store(membrane + offsets, m, mask=inside)


@triton.jit(do_not_specialize=["steps", "neurons"])
def pooling_gradient_scan(grad, spikes, carry, image_grad, first, steps, neurons, image_step,
                          height, width, rows, cols, K: tl.constexpr, BLOCK: tl.constexpr):
    """The pooling neuron's backward: :func:`gradient_scan` over the ``[steps, neurons]`` pooled
    neurons with factor 1, each step's delta divided by K * K and written to every pixel of its
    window in ``image_grad`` (steps ``image_step`` apart; the pixels no window covers are left
    as they are), and delta at step 0 (the carry for the chunk before) into ``first``."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < neurons
    plane = offsets // (rows * cols)
    r = (offsets // cols) % rows
    c = offsets % cols
    delta = tl.load(carry + offsets, mask=inside, other=0)
    last = (steps - 1).to(tl.int64)
    row = last * neurons + offsets
    corner = image_grad + last * image_step + plane * height * width + r * K * width + c * K
    for _ in range(steps):
        g = tl.load(grad + row, mask=inside, other=0)
        delta = tl.where(tl.load(spikes + row, mask=inside, other=0) != 0, g, delta)
        spread = delta / (K * K)
        for i in tl.static_range(K):
            for j in tl.static_range(K):
                tl.store(corner + i * width + j, spread, mask=inside)
        row -= neurons
        corner -= image_step
    tl.store(first + offsets, delta, mask=inside)


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
