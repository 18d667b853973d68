"""Numba kernels of :mod:`graphrt.cuda_kernels.argmax_confidence` (private; imports numba)."""

from __future__ import annotations

import math

from numba import cuda, float64, int64

from graphrt.cuda_kernels._device import (
    BUF,
    NEG_INF,
    OP_MAX,
    OP_MIN,
    OP_SUM,
    POS_INF,
    clean,
    device,
    reduce_f64,
    reduce_i64,
)


@device
def thread_softmax_stats(logits, r, width):
    """This thread's online ``(max, sum exp(x - max), lowest argmax index)`` over its strided entries of row ``r``.

    The index is ``width`` when the thread saw no finite-or-+inf entry.
    """
    m = NEG_INF
    z = 0.0
    idx = width
    i = cuda.threadIdx.x
    while i < width:
        x = clean(logits[r, i])
        if x > m:
            z = z * math.exp(m - x) + 1.0
            m = x
            idx = i
        elif x != NEG_INF and m != POS_INF:
            z += math.exp(x - m)
        i += cuda.blockDim.x
    return m, z, idx


@device
def block_softmax_stats(logits, r, width, fbuf, ibuf, ctr):
    """Block-wide ``(max, normaliser, lowest argmax)`` of row ``r``; the normaliser is 0 unless the max is finite."""
    m, z, idx = thread_softmax_stats(logits, r, width)
    big = reduce_f64(m, OP_MAX, fbuf, ctr)
    first = reduce_i64(idx if m == big else width, OP_MIN, ibuf, ctr)
    total = 0.0
    if big != NEG_INF and big != POS_INF:
        part = 0.0
        if m != NEG_INF:
            part = z * math.exp(m - big)
        total = reduce_f64(part, OP_SUM, fbuf, ctr)
    return big, total, first


@cuda.jit
def argmax_confidence_kernel(logits, tokens, conf):
    """One block per row: ``tokens[r]`` = lowest argmax (0 for an all -inf/NaN row), ``conf[r]`` = its softmax probability.

    logits [R, V] float; tokens [R] int64; conf [R] float32/64.
    """
    fbuf = cuda.shared.array(BUF, float64)
    ibuf = cuda.shared.array(BUF, int64)
    ctr = cuda.local.array(1, int64)
    ctr[0] = 0
    r = cuda.blockIdx.x
    width = logits.shape[1]
    big, total, first = block_softmax_stats(logits, r, width, fbuf, ibuf, ctr)
    if cuda.threadIdx.x == 0:
        tokens[r] = first if first < width else 0
        conf[r] = 1.0 / total if total > 0.0 else 0.0


@cuda.jit
def confidence_kernel(logits, tokens, conf):
    """One block per row: ``conf[r]`` = softmax probability of ``tokens[r]`` (0 when out of range or undefined).

    logits [R, V] float; tokens [R] int; conf [R] float32/64.
    """
    fbuf = cuda.shared.array(BUF, float64)
    ibuf = cuda.shared.array(BUF, int64)
    ctr = cuda.local.array(1, int64)
    ctr[0] = 0
    r = cuda.blockIdx.x
    width = logits.shape[1]
    big, total, first = block_softmax_stats(logits, r, width, fbuf, ibuf, ctr)
    if cuda.threadIdx.x == 0:
        tok = int64(tokens[r])
        value = 0.0
        if total > 0.0 and 0 <= tok < width:
            value = math.exp(clean(logits[r, tok]) - big) / total
        conf[r] = value
