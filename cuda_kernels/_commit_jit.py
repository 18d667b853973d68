"""Numba kernel of :mod:`graphrt.cuda_kernels.commit` (private; imports numba)."""

from __future__ import annotations

from numba import cuda, int64

from graphrt.cuda_kernels._device import row_param_i

MODE_SET = 0
MODE_ADD = 1


@cuda.jit
def commit_kernel(lengths, rows, has_rows, updates, val_a, val_s, val_p, mode, capacity):
    """One thread per update ``u``: ``lengths[rows[u]]`` = value (set) or += value (add), clamped.

    lengths [N] int64; rows [U] int (``has_rows`` false: row ``u``). Rows
    outside ``[0, N)`` are skipped. For a row named several times the thread of
    its *first* occurrence does the write: set takes the last value, add the
    sum of the values (deterministic, no atomics). ``capacity < 0``: no upper clamp.
    """
    u = cuda.grid(1)
    if u >= updates:
        return
    n = lengths.shape[0]
    row = int64(rows[u]) if has_rows else int64(u)
    if row < 0 or row >= n:
        return
    if has_rows:
        for j in range(u):
            if rows[j] == row:
                return
    value = row_param_i(val_a, val_s, val_p, u)
    if has_rows:
        for j in range(u + 1, updates):
            if rows[j] == row:
                v = row_param_i(val_a, val_s, val_p, j)
                value = v if mode == MODE_SET else value + v
    new = value if mode == MODE_SET else lengths[row] + value
    if new < 0:
        new = 0
    if capacity >= 0 and new > capacity:
        new = capacity
    lengths[row] = new
