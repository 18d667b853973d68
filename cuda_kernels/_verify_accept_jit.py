"""Numba kernel of :mod:`graphrt.cuda_kernels.verify_accept` (private; imports numba)."""

from __future__ import annotations

from numba import cuda

from graphrt.cuda_kernels._device import row_param_i


@cuda.jit
def verify_accept_kernel(block, ar_tokens, start_a, start_s, start_p, accepted, bonus, new_length):
    """One thread per row ``b``: longest prefix with ``ar_tokens[b, i] == block[b, i + 1]``.

    block [B, L] int; ar_tokens [B, L] int; accepted, bonus, new_length [B] int64.
    """
    b = cuda.grid(1)
    if b >= block.shape[0]:
        return
    length = block.shape[1]
    k = 0
    while k < length - 1 and ar_tokens[b, k] == block[b, k + 1]:
        k += 1
    accepted[b] = k
    bonus[b] = ar_tokens[b, k]
    new_length[b] = row_param_i(start_a, start_s, start_p, b) + k + 1
