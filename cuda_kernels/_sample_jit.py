"""Numba kernel of :mod:`graphrt.cuda_kernels.sample` (private; imports numba).

One thread block per row. Every pass below is a strided loop over the row
followed by one block reduction; loop trip counts depend only on reduced
(block-uniform) values, so every thread reaches every barrier.

Filtering never sorts. With ``x = clean(logits) / T`` and ``key`` the ordered
integer key of ``clean(logits)`` (:func:`_device.ordered_key`):

* top-k: a 16-ary search on ``key`` (15 thresholds per pass, ``log16`` of
  the key range: at most 16 passes, 9 for float32 input, 6 for float16) for
  the k-th largest logit; since ``x`` is a monotone function of the logit,
  its ``x`` is the k-th largest ``x``; ties at that value keep the lowest
  indices, found by a 16-ary search on the index (``log16 V`` passes, only
  when the tie class straddles the cut);
* top-p, on the unnormalised weights ``w = exp(x - max x)`` of the top-k
  survivors, ``W`` their sum: the same search on ``key`` with the weight
  ``sum(w[key >= t])`` against ``top_p * W``, then, in the tie class at the
  cut (``m`` survivors of weight ``w_c`` each, ``A`` the weight above them),
  the ranks ``r < m`` with ``r * w_c < top_p * W - A`` kept in index order:
  the comparisons of :func:`graphrt.sampling.top_p_mask`, with nothing summed
  inside the tie class;
* the token is ``argmax(x + gumbel)`` over the survivors (lowest index on ties).
"""

from __future__ import annotations

import math

from numba import cuda, float64, int64

from graphrt.cuda_kernels._device import (
    BUF,
    NCAND,
    NEG_INF,
    OP_MAX,
    OP_MIN,
    OP_SUM,
    POS_INF,
    VBUF,
    clean,
    device,
    gumbel_at,
    int_word,
    ordered_key,
    position_key,
    reduce_f64,
    reduce_i64,
    reduce_vec_sum,
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
def tie_ranks_kept(ties, weight, room):
    """Number of ranks ``r`` in ``[0, ties)`` with ``r * weight < room`` (a prefix: the product grows
    with ``r``), by bisection; every thread computes the same value."""
    lo = 0
    hi = ties
    while lo < hi:
        mid = (lo + hi) // 2
        if float(mid) * weight < room:
            lo = mid + 1
        else:
            hi = mid
    return lo


@device
def count_x(logits, r, width, temperature, tau, strict, k_on, k_tau, k_cut, ibuf, ctr):
    """Number of top-k survivors (every entry when ``k_on`` is false) with ``x > tau`` (``strict``)
    or ``x == tau``."""
    c = 0
    i = cuda.threadIdx.x
    while i < width:
        x = x_of(logits[r, i], temperature)
        if ((strict and x > tau) or (not strict and x == tau)) and in_set(x, i, k_on, k_tau, k_cut):
            c += 1
        i += cuda.blockDim.x
    return reduce_i64(c, OP_SUM, ibuf, ctr)


@device
def total_weight(logits, r, width, temperature, big, above, k_on, k_tau, k_cut, fbuf, ctr):
    """``sum exp(x - big)`` over the top-k survivors with ``x > above`` (all of them for ``-inf``)."""
    s = 0.0
    i = cuda.threadIdx.x
    while i < width:
        x = x_of(logits[r, i], temperature)
        if x != NEG_INF and in_set(x, i, k_on, k_tau, k_cut) and x > above:
            s += math.exp(x - big)
        i += cuda.blockDim.x
    return reduce_f64(s, OP_SUM, fbuf, ctr)


@device
def measure_pass(logits, r, width, shift, temperature, mode, lo, step, hi, tau, big,
                 k_on, k_tau, k_cut, acc, vbuf, ctr):
    """One pass of a 16-ary search: ``acc[j]`` = block-wide measure at candidate ``c_j = lo + (j+1) step``
    (candidates ``>= hi`` get 0).

    mode 0: #entries with ``key >= c_j``;  mode 1: weight ``sum exp(x - big)`` of top-k survivors
    with ``key >= c_j``; mode 2: #entries with ``x == tau`` and index ``< c_j``;
    mode 3: #top-k survivors with ``x == tau`` and index ``< c_j``.
    """
    for j in range(NCAND):
        acc[j] = 0.0
    i = cuda.threadIdx.x
    while i < width:
        v = clean(logits[r, i])
        x = x_of(v, temperature)
        member = True
        if mode >= 2:
            member = x == tau
        if mode == 1 or mode == 3:
            member = member and x != NEG_INF and in_set(x, i, k_on, k_tau, k_cut)
        if member:
            w = 1.0
            if mode == 1:
                w = math.exp(x - big)
            c = lo
            if mode <= 1:
                key = ordered_key(v, shift)
                for j in range(NCAND):
                    c += step
                    if c >= hi or key < c:
                        break  # candidates increase: no later one is reached either
                    acc[j] += w
            else:
                for j in range(NCAND):
                    c += step
                    if c >= hi:
                        break
                    if i < c:
                        acc[j] += w
        i += cuda.blockDim.x
    reduce_vec_sum(acc, vbuf, ctr)


@device
def key_search(logits, r, width, shift, temperature, mode, lo, hi, target, big,
               k_on, k_tau, k_cut, acc, vbuf, ctr):
    """Largest key ``t`` in ``[lo, hi)`` whose measure (``key >= t``, mode 0 or 1) is ``>= target``,
    given measure(lo) >= target > measure(hi); about ``log16(hi - lo)`` passes."""
    while lo < hi - 1:
        step = max((hi >> 4) - (lo >> 4), 1)  # ~(hi - lo) / 16 without overflow
        measure_pass(logits, r, width, shift, temperature, mode, lo, step, hi, 0.0, big,
                     k_on, k_tau, k_cut, acc, vbuf, ctr)
        new_lo = lo
        new_hi = hi
        c = lo
        for j in range(NCAND):
            c += step
            if c >= hi:
                break
            if acc[j] >= target:
                new_lo = c
            else:
                new_hi = c
                break
        lo = new_lo
        hi = new_hi
    return lo


@device
def index_search(logits, r, width, temperature, mode, tau, target, k_on, k_tau, k_cut, acc, vbuf, ctr):
    """Smallest ``J`` in ``[1, V]`` with ``F(J) >= target``, ``F`` the tie count of mode 2 or 3
    (non-decreasing in ``J``); ``V`` if none."""
    lo = 0
    hi = width
    while hi - lo > 1:
        step = max((hi - lo) // 16, 1)
        measure_pass(logits, r, width, 0, temperature, mode, lo, step, hi, tau, 0.0,
                     k_on, k_tau, k_cut, acc, vbuf, ctr)
        new_lo = lo
        new_hi = hi
        c = lo
        for j in range(NCAND):
            c += step
            if c >= hi:
                break
            if acc[j] >= target:
                new_hi = c
                break
            new_lo = c
        lo = new_lo
        hi = new_hi
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
    vbuf = cuda.shared.array(VBUF, float64)
    acc = cuda.local.array(NCAND, float64)
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
        t_key = key_search(logits, r, width, shift, temperature, 0, key_lo, key_hi, float(top_k), 0.0,
                           False, 0.0, 0, acc, vbuf, ctr)
        k_tau = x_at_key(logits, r, width, shift, t_key, temperature, fbuf, ctr)
        need = top_k - count_x(logits, r, width, temperature, k_tau, True, False, 0.0, 0, ibuf, ctr)
        ties = count_x(logits, r, width, temperature, k_tau, False, False, 0.0, 0, ibuf, ctr)
        if ties > need:
            k_cut = index_search(logits, r, width, temperature, 2, k_tau, float(need), False, 0.0, 0,
                                 acc, vbuf, ctr)

    # top-p on the weights w = exp(x - big): largest key t with w(key >= t) >= top_p * W, then the
    # ranks r of the tie class at the cut with r * w_c < top_p * W - (weight above), as top_p_mask.
    p_tau = NEG_INF
    p_cut = width
    if p_on:
        room = top_p * total_weight(logits, r, width, temperature, big, NEG_INF, k_on, k_tau, k_cut, fbuf, ctr)
        t_key = key_search(logits, r, width, shift, temperature, 1, key_lo, key_hi, room, big,
                           k_on, k_tau, k_cut, acc, vbuf, ctr)
        p_tau = x_at_key(logits, r, width, shift, t_key, temperature, fbuf, ctr)
        # (a GPU may fuse this into one multiply-add: the same value when nothing is above, A = 0)
        room = room - total_weight(logits, r, width, temperature, big, p_tau, k_on, k_tau, k_cut, fbuf, ctr)
        ties = count_x(logits, r, width, temperature, p_tau, False, k_on, k_tau, k_cut, ibuf, ctr)
        kept = tie_ranks_kept(ties, math.exp(p_tau - big), room)
        if kept == 0:
            p_cut = 0
        elif kept < ties:
            p_cut = index_search(logits, r, width, temperature, 3, p_tau, float(kept), k_on, k_tau, k_cut,
                                 acc, vbuf, ctr)

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
