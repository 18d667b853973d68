"""Numba CUDA device functions shared by the kernels (private; imported lazily).

Everything here imports numba, so only the ``_*_jit`` kernel modules import it,
and only when a kernel is first launched: ``import graphrt`` and the torch
references never import numba.

Two implementations are chosen once, at import, by
``numba.config.ENABLE_CUDASIM`` (set ``NUMBA_ENABLE_CUDASIM=1`` before numba is
first imported):

* block reductions: on a GPU, warp shuffles then one shared-memory slot per
  warp; in the simulator (no warp intrinsics), one shared-memory slot per
  thread. Both take exactly one ``syncthreads`` per reduction (double-buffered
  slots, see :func:`reduce_f64`), combine in a fixed order (deterministic), and
  must be called by every thread of the block (block-uniform control flow);
* the float64 -> int64 bit cast: ``libdevice.double_as_longlong`` on a GPU,
  ``numpy.ndarray.view`` in the simulator.

The counter-based hash reproduces :mod:`graphrt.noise` bit for bit: words are
held in ``uint64`` below ``2**32``, every product of two such words is below
``2**64`` (no wrap-around, no overflow warning in the simulator) and is masked
back to 32 bits, exactly like the reference's exact int64 arithmetic.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("NUMBA_CUDA_ARRAY_INTERFACE_SYNC", "0")

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import cuda, int64, uint64  # noqa: E402

SIM: bool = bool(numba.config.ENABLE_CUDASIM)
"""True when kernels run in Numba's CUDA simulator."""

MAX_THREADS = 1024
"""Largest thread block the row kernels accept."""
SLOTS = MAX_THREADS if SIM else 32
"""Shared-memory slots per reduction buffer: one per thread (simulator) or per warp (GPU)."""
BUF = 2 * SLOTS
"""Size of a reduction buffer: two halves, used alternately (double buffering)."""
NCAND = 15
"""Thresholds tested per pass by the 16-ary searches (4 bits of the key per pass)."""
VBUF = 2 * SLOTS * NCAND
"""Size of a vector-reduction buffer (``NCAND`` sums per slot, double-buffered)."""

OP_SUM = 0
OP_MAX = 1
OP_MIN = 2

NEG_INF = -math.inf
POS_INF = math.inf


def device(fn):
    """Decorator for device functions: a Numba device function on a GPU, plain Python in the simulator.

    The simulator swaps module globals on every call of a ``cuda.jit`` device
    function (tens of microseconds); plain functions avoid that. A plain
    function that uses ``cuda.*`` (thread indices, barriers) only works in the
    simulator when it lives in the module of the kernel that calls it, whose
    globals the simulator swaps for the whole launch; the reductions below,
    called from other modules, therefore stay ``cuda.jit`` device functions.
    """
    return fn if SIM else cuda.jit(device=True)(fn)


# --- counter-based hash (graphrt.noise), uint64 words below 2**32 ------------------------
M32 = np.uint64(0xFFFFFFFF)
H0 = np.uint64(0x3C6EF372)
GOLDEN = np.uint64(0x9E3779B1)
C1 = np.uint64(0x85EBCA6B)
C2 = np.uint64(0xC2B2AE35)
S13 = np.uint64(13)
S16 = np.uint64(16)
S32 = np.uint64(32)
HALF = 0.5
TWO32 = 4294967296.0
SIGN_FLIP = np.int64(0x7FFFFFFFFFFFFFFF)


@device
def fmix32(h):
    """MurmurHash3 ``fmix32`` on a uint64 holding a 32-bit word."""
    h = h ^ (h >> S16)
    h = (h * C1) & M32
    h = h ^ (h >> S13)
    h = (h * C2) & M32
    return h ^ (h >> S16)


@device
def absorb(h, word):
    """Mix the 32-bit word ``word`` (uint64) into the running hash ``h`` (uint64)."""
    return fmix32((((h * GOLDEN) & M32) + (word & M32)) & M32)


@device
def int_word(x):
    """Low 32 bits of the integer ``x`` (two's complement), as uint64."""
    return uint64(x) & M32


@device
def position_key(seed_lo, seed_hi, stream, purpose, position):
    """Hash state of one token position before the vocabulary index (``noise.position_keys``)."""
    h = absorb(H0, seed_lo)
    h = absorb(h, seed_hi)
    h = absorb(h, stream)
    h = absorb(h, purpose)
    return absorb(h, position)


@device
def uniform_at(key, index):
    """The uniform in (0, 1) of vocabulary entry ``index`` under position ``key`` (bitwise = reference)."""
    h = absorb(key, int_word(index))
    return (float(h) + HALF) / TWO32


@device
def gumbel_at(key, index):
    """Standard Gumbel noise ``-log(-log(u))`` for entry ``index`` (float64)."""
    return -math.log(-math.log(uniform_at(key, index)))


# --- loads and ordering keys --------------------------------------------------------------
@device
def clean(v):
    """float64 of a logit with NaN replaced by -inf.

    ``float()`` rather than ``float64()``: the same cast when compiled, and a
    Python float in the simulator, whose arithmetic overflows to inf silently
    (numpy scalars would warn).
    """
    x = float(v)
    if x != x:
        return NEG_INF
    return x


if SIM:

    import struct

    @device
    def f64_bits(x):
        """Bit pattern of the float64 ``x`` as int64 (simulator: ``struct``)."""
        return struct.unpack("<q", struct.pack("<d", x))[0]

else:
    from numba.cuda import libdevice

    @device
    def f64_bits(x):
        """Bit pattern of the float64 ``x`` as int64."""
        return libdevice.double_as_longlong(x)


@device
def ordered_key(x, shift):
    """int64 key with ``key(a) < key(b)`` iff ``a < b`` for non-NaN float64 (``-0.0 == 0.0``).

    ``shift`` drops low bits that are zero for every value of a narrower input
    dtype (29 for float32, 42 for float16): still injective and ordered on
    those values, and the key range shrinks, so bisection takes fewer steps.
    """
    if x == 0.0:
        x = 0.0
    b = f64_bits(x)
    if b < 0:
        b = b ^ SIGN_FLIP
    return b >> shift


@device
def midpoint(lo, hi):
    """``floor((lo + hi) / 2)`` for int64 without overflow."""
    return (lo >> 1) + (hi >> 1) + (lo & hi & 1)


# --- block reductions ---------------------------------------------------------------------
@device
def combine_f(a, b, op):
    if op == OP_SUM:
        return a + b
    if op == OP_MAX:
        return a if a >= b else b
    return a if a <= b else b


@device
def combine_i(a, b, op):
    if op == OP_SUM:
        return a + b
    if op == OP_MAX:
        return a if a >= b else b
    return a if a <= b else b


if SIM:

    @cuda.jit(device=True)
    def reduce_f64(v, op, buf, ctr):
        """Block-wide reduction of float64 ``v`` (sum / max / min); every thread gets the result.

        ``buf`` is a shared ``float64[BUF]``; ``ctr`` a local ``int64[1]`` counter
        that alternates the buffer half, so one barrier per reduction suffices:
        a half is rewritten two reductions later, after the barrier of the
        reduction in between, which every thread reaches only after reading.
        Simulator variant: one slot per thread, combined by numpy in a fixed
        order (deterministic, and far cheaper than a Python loop).
        """
        base = (ctr[0] & 1) * SLOTS
        ctr[0] += 1
        buf[base + cuda.threadIdx.x] = v
        cuda.syncthreads()
        vals = buf[base:base + cuda.blockDim.x]
        if op == OP_SUM:
            return float(vals.sum())
        if op == OP_MAX:
            return float(vals.max())
        return float(vals.min())

    @cuda.jit(device=True)
    def reduce_i64(v, op, buf, ctr):
        """Block-wide reduction of int64 ``v``; see :func:`reduce_f64`."""
        base = (ctr[0] & 1) * SLOTS
        ctr[0] += 1
        buf[base + cuda.threadIdx.x] = v
        cuda.syncthreads()
        vals = buf[base:base + cuda.blockDim.x]
        if op == OP_SUM:
            return int(vals.sum())
        if op == OP_MAX:
            return int(vals.max())
        return int(vals.min())

    @cuda.jit(device=True)
    def reduce_vec_sum(acc, buf, ctr):
        """Block-wide sums of the ``NCAND`` float64 entries of the local array ``acc``, in place.

        ``buf`` is a shared ``float64[VBUF]``; one barrier (see :func:`reduce_f64`).
        """
        base = (ctr[0] & 1) * SLOTS * NCAND
        ctr[0] += 1
        start = base + cuda.threadIdx.x * NCAND
        buf[start:start + NCAND] = acc[:NCAND]
        cuda.syncthreads()
        n = cuda.blockDim.x
        acc[:NCAND] = buf[base:base + n * NCAND].reshape(n, NCAND).sum(axis=0)

else:

    @cuda.jit(device=True)
    def reduce_f64(v, op, buf, ctr):
        """Block-wide reduction of float64 ``v``: warp shuffles, then one slot per warp.

        The block size must be a multiple of 32. See the simulator variant for
        the double-buffering argument (one barrier per reduction).
        """
        base = (ctr[0] & 1) * SLOTS
        ctr[0] += 1
        offset = 16
        while offset > 0:
            v = combine_f(v, cuda.shfl_down_sync(0xFFFFFFFF, v, offset), op)
            offset //= 2
        if (cuda.threadIdx.x & 31) == 0:
            buf[base + (cuda.threadIdx.x >> 5)] = v
        cuda.syncthreads()
        acc = buf[base]
        for j in range(1, cuda.blockDim.x >> 5):
            acc = combine_f(acc, buf[base + j], op)
        return acc

    @cuda.jit(device=True)
    def reduce_i64(v, op, buf, ctr):
        """Block-wide reduction of int64 ``v``; see :func:`reduce_f64`."""
        base = (ctr[0] & 1) * SLOTS
        ctr[0] += 1
        offset = 16
        while offset > 0:
            v = combine_i(v, cuda.shfl_down_sync(0xFFFFFFFF, v, offset), op)
            offset //= 2
        if (cuda.threadIdx.x & 31) == 0:
            buf[base + (cuda.threadIdx.x >> 5)] = v
        cuda.syncthreads()
        acc = buf[base]
        for j in range(1, cuda.blockDim.x >> 5):
            acc = combine_i(acc, buf[base + j], op)
        return acc


if not SIM:

    @cuda.jit(device=True)
    def reduce_vec_sum(acc, buf, ctr):
        """Block-wide sums of the ``NCAND`` float64 entries of the local array ``acc``, in place:
        a warp-shuffle sum per entry, one slot row per warp, one barrier."""
        base = (ctr[0] & 1) * SLOTS * NCAND
        ctr[0] += 1
        warp = cuda.threadIdx.x >> 5
        for j in range(NCAND):
            v = acc[j]
            offset = 16
            while offset > 0:
                v += cuda.shfl_down_sync(0xFFFFFFFF, v, offset)
                offset //= 2
            if (cuda.threadIdx.x & 31) == 0:
                buf[base + warp * NCAND + j] = v
        cuda.syncthreads()
        warps = cuda.blockDim.x >> 5
        for j in range(NCAND):
            total = 0.0
            for w in range(warps):
                total += buf[base + w * NCAND + j]
            acc[j] = total


@device
def row_param_f(arr, scalar, per, row):
    """Per-row float parameter: ``arr[row // per]`` when ``per > 0``, else the scalar."""
    if per > 0:
        return float(arr[row // per])
    return scalar


@device
def row_param_i(arr, scalar, per, row):
    """Per-row integer parameter: ``arr[row // per]`` when ``per > 0``, else the scalar."""
    if per > 0:
        return int64(arr[row // per])
    return scalar
