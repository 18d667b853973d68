"""Numba kernel of :mod:`graphrt.cuda_kernels.noise` (private; imports numba)."""

from __future__ import annotations

from numba import cuda

from graphrt.cuda_kernels._device import int_word, position_key, uniform_at


@cuda.jit
def uniform_kernel(positions, out, seed_lo, seed_hi, stream, purpose):
    """One thread per entry: ``out[n, j]`` = the uniform of position ``positions[n]``, vocabulary index ``j``.

    positions [N] int; out [N, W] float64.
    """
    flat = cuda.grid(1)
    width = out.shape[1]
    if flat >= out.shape[0] * width:
        return
    n = flat // width
    j = flat - n * width
    key = position_key(int_word(seed_lo), int_word(seed_hi), int_word(stream), int_word(purpose),
                       int_word(positions[n]))
    out[n, j] = uniform_at(key, j)
