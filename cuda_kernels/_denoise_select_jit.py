"""Numba kernel of :mod:`graphrt.cuda_kernels.denoise_select` (private; imports numba)."""

from __future__ import annotations

from numba import cuda, float64, int8, int64

from graphrt.cuda_kernels._device import (
    BUF,
    NEG_INF,
    OP_MAX,
    OP_MIN,
    OP_SUM,
    device,
    reduce_f64,
    reduce_i64,
    row_param_f,
    row_param_i,
)

MAX_LEN = 4096
"""Longest block the kernel accepts (one shared flag per slot)."""


@device
def score_of(block, conf, b, i, mask_id):
    """Selection score of slot ``i``: its confidence (float64) if masked, else -inf."""
    if block[b, i] == mask_id:
        return float(conf[b, i])
    return NEG_INF


@device
def sorts_before(a, i, c, j):
    """Whether score ``a`` at slot ``i`` precedes score ``c`` at slot ``j`` in a stable descending
    ``torch.sort`` (NaN sorts first; equal scores keep index order)."""
    a_nan = a != a
    c_nan = c != c
    if a_nan or c_nan:
        if a_nan and c_nan:
            return i < j
        return a_nan
    if a == c:
        return i < j
    return a > c


@cuda.jit
def denoise_select_kernel(block, candidates, conf, mask_id, count_mode,
                          thr_a, thr_s, thr_p, cnt_a, cnt_s, cnt_p, remaining, write_remaining):
    """One block per row ``b``: commit candidates into the chosen masked slots of ``block[b]`` in place.

    block [B, L] int; candidates [B, L] int; conf [B, L] float; remaining [B] int64
    (written when ``write_remaining``): masks left after the commit.
    """
    fbuf = cuda.shared.array(BUF, float64)
    ibuf = cuda.shared.array(BUF, int64)
    chosen = cuda.shared.array(MAX_LEN, int8)
    ctr = cuda.local.array(1, int64)
    ctr[0] = 0
    b = cuda.blockIdx.x
    length = block.shape[1]

    # Phase 1 (reads only): which slots take their candidate.
    if count_mode:
        count = row_param_i(cnt_a, cnt_s, cnt_p, b)
        i = cuda.threadIdx.x
        while i < length:
            take = 0
            if block[b, i] == mask_id:
                take = 1
                if 0 < count < length:
                    s = score_of(block, conf, b, i, mask_id)
                    rank = 0
                    for j in range(length):
                        if sorts_before(score_of(block, conf, b, j, mask_id), j, s, i):
                            rank += 1
                    take = 1 if rank < count else 0
            chosen[i] = take
            i += cuda.blockDim.x
    else:
        threshold = row_param_f(thr_a, thr_s, thr_p, b)
        best_t = NEG_INF
        idx_t = length
        i = cuda.threadIdx.x
        while i < length:
            s = score_of(block, conf, b, i, mask_id)
            if s > best_t:  # NaN never wins: argmax treats it as -inf
                best_t = s
                idx_t = i
            i += cuda.blockDim.x
        best = reduce_f64(best_t, OP_MAX, fbuf, ctr)
        forced = reduce_i64(idx_t if best_t == best else length, OP_MIN, ibuf, ctr)
        if forced >= length:
            forced = 0  # all scores -inf: argmax_lowest gives slot 0
        i = cuda.threadIdx.x
        while i < length:
            take = 0
            if block[b, i] == mask_id:
                if i == forced or score_of(block, conf, b, i, mask_id) >= threshold:
                    take = 1
            chosen[i] = take
            i += cuda.blockDim.x
    # Masks left after the commit; its barrier also orders every read above before the writes below.
    left = 0
    i = cuda.threadIdx.x
    while i < length:
        new = candidates[b, i] if chosen[i] else block[b, i]
        if new == mask_id:
            left += 1
        i += cuda.blockDim.x
    left = reduce_i64(left, OP_SUM, ibuf, ctr)

    # Phase 2: scatter.
    i = cuda.threadIdx.x
    while i < length:
        if chosen[i]:
            block[b, i] = candidates[b, i]
        i += cuda.blockDim.x
    if write_remaining and cuda.threadIdx.x == 0:
        remaining[b] = left
