"""Numba kernel of :mod:`graphrt.cuda_kernels.sample` (private; imports numba).

One thread block per row. Every pass below is a strided loop over the row
followed by one block reduction; loop trip counts depend only on reduced
(block-uniform) values, so every thread reaches every barrier.

Filtering never sorts. With ``x = clean(logits) / T`` and ``key`` the ordered
integer key of ``clean(logits)`` (:func:`_device.ordered_key`):

* top-k: bisection on ``key`` for the k-th largest logit (at most 64, 35 for
  float32 input, 22 for float16 passes); since ``x`` is a monotone function of
  the logit, its ``x`` is the k-th largest ``x``; ties at that value keep the
  lowest indices, found by bisection on the index (``log2 V`` passes, only
  when the tie class straddles the cut);
* top-p: the same bisection on ``key`` with the probability mass
  ``sum(softmax(x)[key >= t])`` over the top-k survivors, then the tie class at
  the cut kept in index order while the mass before a token is ``< top_p``;
* the token is ``argmax(x + gumbel)`` over the survivors (lowest index on ties).
"""

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
    gumbel_at,
    int_word,
    midpoint,
    ordered_key,
    position_key,
    reduce_f64,
    reduce_i64,
    row_param_f,
    row_param_i,
)

INT64_MAX = 9223372036854775807
INT64_MIN = -9223372036854775807 - 1


@device
def x_of(v, temperature):
    """Tempered logit ``clean(v) / T`` (NaN -> -inf)."""
    x = clean(v) / temperature
    if x != x:
        return NEG_INF
    return x


@device
def in_set(x, i, active, tau, cut):
    """Membership of entry ``(x, i)`` in a value-threshold set: ``x > tau`` or ``x == tau`` and ``i < cut``."""
    if not active:
        return True
    return x > tau or (x == tau and i < cut)


@device
def greedy(logits, r, width, fbuf, ibuf, ctr):
    """Lowest-index argmax of ``clean(logits[r])`` (0 for an all -inf row)."""
    best = NEG_INF
    idx = width
    i = cuda.threadIdx.x
    while i < width:
        v = clean(logits[r, i])
        if v > best:
            best = v
            idx = i
        i += cuda.blockDim.x
    big = reduce_f64(best, OP_MAX, fbuf, ctr)
    first = reduce_i64(idx if best == big else width, OP_MIN, ibuf, ctr)
    return first if first < width else 0


@device
def count_key_ge(logits, r, width, shift, threshold, temperature, k_on, k_tau, k_cut, ibuf, ctr):
    """Number of top-k survivors (all entries when ``k_on`` is false) with ``key >= threshold``."""
    c = 0
    i = cuda.threadIdx.x
    while i < width:
        v = clean(logits[r, i])
        if ordered_key(v, shift) >= threshold:
            if in_set(x_of(v, temperature), i, k_on, k_tau, k_cut):
                c += 1
        i += cuda.blockDim.x
    return reduce_i64(c, OP_SUM, ibuf, ctr)


@device
def x_at_key(logits, r, width, shift, key, temperature, fbuf, ctr):
    """The tempered value ``x`` of the entries whose key is ``key`` (all equal)."""
    best = NEG_INF
    i = cuda.threadIdx.x
    while i < width:
        v = clean(logits[r, i])
        if ordered_key(v, shift) == key:
            best = max(best, x_of(v, temperature))
        i += cuda.blockDim.x
    return reduce_f64(best, OP_MAX, fbuf, ctr)


@device
def count_x(logits, r, width, temperature, tau, strict, below, ibuf, ctr):
    """Number of entries with ``x > tau`` (``strict``) or ``x == tau`` and index ``< below``."""
    c = 0
    i = cuda.threadIdx.x
    while i < width:
        x = x_of(logits[r, i], temperature)
        if strict:
            if x > tau:
                c += 1
        elif x == tau and i < below:
            c += 1
        i += cuda.blockDim.x
    return reduce_i64(c, OP_SUM, ibuf, ctr)


@device
def mass(logits, r, width, shift, temperature, big, norm, mode, threshold, below,
         k_on, k_tau, k_cut, fbuf, ctr):
    """Softmax mass ``sum exp(x - big) / norm`` over the top-k survivors selected by ``mode``.

    mode 0: all survivors; 1: ``key >= threshold`` (an int64 key);
    2: ``x > threshold`` (a float); 3: ``x == threshold`` and index ``< below``.
    """
    s = 0.0
    i = cuda.threadIdx.x
    while i < width:
        v = clean(logits[r, i])
        x = x_of(v, temperature)
        if in_set(x, i, k_on, k_tau, k_cut):
            take = True
            if mode == 1:
                take = ordered_key(v, shift) >= threshold
            elif mode == 2:
                take = x > threshold
            elif mode == 3:
                take = x == threshold and i < below
            if take and x != NEG_INF:
                s += math.exp(x - big) / norm
        i += cuda.blockDim.x
    return reduce_f64(s, OP_SUM, fbuf, ctr)


@device
def first_index_cut(logits, r, width, temperature, tau, need, fbuf, ibuf, ctr):
    """Smallest ``J`` with ``#{i < J : x_i == tau} >= need`` (bisection on the index)."""
    lo = 0
    hi = width
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_x(logits, r, width, temperature, tau, False, mid, ibuf, ctr) >= need:
            hi = mid
        else:
            lo = mid
    return hi


@cuda.jit
def sample_kernel(logits, positions, out,
                  temp_a, temp_s, temp_p,
                  topk_a, topk_s, topk_p,
                  topp_a, topp_s, topp_p,
                  seed_a, seed_lo_s, seed_hi_s, seed_p,
                  stream_a, stream_s, stream_p,
                  purpose, shift):
    """One block per row ``r``: ``out[r]`` = the token of :func:`graphrt.sampling.sample`.

    logits [R, V] float; positions [R] int; out [R] int64. Per-request
    parameters come as ``(array, scalar, per)`` triples (``per = 0``: scalar).
    """
    fbuf = cuda.shared.array(BUF, float64)
    ibuf = cuda.shared.array(BUF, int64)
    ctr = cuda.local.array(1, int64)
    ctr[0] = 0
    r = cuda.blockIdx.x
    width = logits.shape[1]
    temperature = row_param_f(temp_a, temp_s, temp_p, r)
    if temperature <= 0.0:
        token = greedy(logits, r, width, fbuf, ibuf, ctr)
        if cuda.threadIdx.x == 0:
            out[r] = token
        return
    top_k = row_param_i(topk_a, topk_s, topk_p, r)
    top_p = row_param_f(topp_a, topp_s, topp_p, r)
    k_on = 0 < top_k < width
    p_on = top_p < 1.0

    # pass 1: max of x with its lowest index; key range.
    big_t = NEG_INF
    idx_t = width
    kmin_t = INT64_MAX
    kmax_t = INT64_MIN
    i = cuda.threadIdx.x
    while i < width:
        v = clean(logits[r, i])
        x = x_of(v, temperature)
        if x > big_t:
            big_t = x
            idx_t = i
        key = ordered_key(v, shift)
        kmin_t = min(kmin_t, key)
        kmax_t = max(kmax_t, key)
        i += cuda.blockDim.x
    big = reduce_f64(big_t, OP_MAX, fbuf, ctr)
    first = reduce_i64(idx_t if big_t == big else width, OP_MIN, ibuf, ctr)
    if big == NEG_INF or big == POS_INF or (p_on and not top_p > 0.0):
        # all -inf (or NaN temperature): token 0; a +inf entry, or top_p <= 0: the first maximum.
        if cuda.threadIdx.x == 0:
            out[r] = first if first < width else 0
        return
    key_lo = reduce_i64(kmin_t, OP_MIN, ibuf, ctr)
    key_hi = reduce_i64(kmax_t, OP_MAX, ibuf, ctr) + 1

    # top-k: largest key t with #{key >= t} >= k, then the tie class in index order.
    k_tau = NEG_INF
    k_cut = width
    if k_on:
        lo = key_lo
        hi = key_hi
        while lo < hi - 1:
            mid = midpoint(lo, hi)
            if count_key_ge(logits, r, width, shift, mid, temperature, False, 0.0, 0, ibuf, ctr) >= top_k:
                lo = mid
            else:
                hi = mid
        k_tau = x_at_key(logits, r, width, shift, lo, temperature, fbuf, ctr)
        need = top_k - count_x(logits, r, width, temperature, k_tau, True, 0, ibuf, ctr)
        ties = count_x(logits, r, width, temperature, k_tau, False, width, ibuf, ctr)
        if ties > need:
            k_cut = first_index_cut(logits, r, width, temperature, k_tau, need, fbuf, ibuf, ctr)

    # top-p: largest key t with mass(key >= t) >= top_p, then the tie class while mass before < top_p.
    p_tau = NEG_INF
    p_cut = width
    if p_on:
        norm = mass(logits, r, width, shift, temperature, big, 1.0, 0, 0, 0, k_on, k_tau, k_cut, fbuf, ctr)
        total = mass(logits, r, width, shift, temperature, big, norm, 0, 0, 0, k_on, k_tau, k_cut, fbuf, ctr)
        if total >= top_p:
            lo = key_lo
            hi = key_hi
            while lo < hi - 1:
                mid = midpoint(lo, hi)
                if mass(logits, r, width, shift, temperature, big, norm, 1, mid, 0,
                        k_on, k_tau, k_cut, fbuf, ctr) >= top_p:
                    lo = mid
                else:
                    hi = mid
            p_tau = x_at_key(logits, r, width, shift, lo, temperature, fbuf, ctr)
            above = mass(logits, r, width, shift, temperature, big, norm, 2, p_tau, 0,
                         k_on, k_tau, k_cut, fbuf, ctr)
            lo = 0
            hi = width
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if above + mass(logits, r, width, shift, temperature, big, norm, 3, p_tau, mid,
                                k_on, k_tau, k_cut, fbuf, ctr) >= top_p:
                    hi = mid
                else:
                    lo = mid
            p_cut = hi
        else:
            p_on = False

    # Gumbel-max over the survivors.
    seed_lo = int_word(seed_a[r // seed_p]) if seed_p > 0 else int_word(seed_lo_s)
    seed_hi = int_word(seed_a[r // seed_p] >> 32) if seed_p > 0 else int_word(seed_hi_s)
    stream = int_word(row_param_i(stream_a, stream_s, stream_p, r))
    key = position_key(seed_lo, seed_hi, stream, int_word(purpose), int_word(positions[r]))
    best = NEG_INF
    idx = width
    i = cuda.threadIdx.x
    while i < width:
        x = x_of(logits[r, i], temperature)
        if x != NEG_INF and in_set(x, i, k_on, k_tau, k_cut) and (
                i == first or in_set(x, i, p_on, p_tau, p_cut)):
            s = x + gumbel_at(key, i)
            if s > best:
                best = s
                idx = i
        i += cuda.blockDim.x
    top = reduce_f64(best, OP_MAX, fbuf, ctr)
    token = reduce_i64(idx if best == top else width, OP_MIN, ibuf, ctr)
    if cuda.threadIdx.x == 0:
        out[r] = token if token < width else 0
