"""A float32 matrix product for CPU decoding that reads its weights from memory once per call at any width, and
gives each row the same bits at every row count (Numba).

A decode step of a model like SmolLM2-135M streams every weight once per forward (538 MB in float32); its
products have 1 to a few hundred rows (one token, a verification block, a batch of streams, a prompt). Lossless
speculative decoding needs a token's logits to be the same, bit for bit, whether the token ran alone (an AR
step) or inside a wider call (a verification block, other streams, a prompt packed beside it): whatever
computes a product must give each row the same result at every row count.

The weight ``[out, in]`` is laid out once as ``[out / 16, in, 16]``: blocks of 16 output columns, each stored
``in``-major, so a block is one contiguous stream (36 KB for ``in = 576``). Each thread takes a contiguous run of
blocks, four at a time (a group). Every tile of input rows walks the group while it stays in the core's cache, so
the weights are read from memory once per call whatever its width. At each ``k`` a row's input value is
broadcast against a block's 16 weights (two 256-bit vectors: LLVM prefers them to one 512-bit vector on
AVX-512 machines too) while the weights ahead are prefetched. A tile keeps four to eight independent chains of
multiply-adds in registers, so that they hide each other's latency:

* 8 rows of one block for each whole tile of 8 (and a last 5-8 rows);
* 4 rows of two blocks for a last 2-4 rows;
* 1 row of four blocks for a last single row, the decode step.

One row of one block, one chain, waits on every multiply-add: on a 2-core Intel Xeon, SmolLM2's 121 products at
one row took 32.6 ms that way, and 24.8 ms four blocks at a time (the same run, interleaved; 4 rows 31.1 against
26.4 ms; 8 rows and more within 8%).

Every output element is one chain of fused multiply-adds over ``k = 0 .. in-1`` in order, vectorised across
the 16 output columns only (no reassociation is allowed; ``contract`` lets LLVM fuse each multiply-add), so
its bits depend on its row's input and the weights only: not on the tile that computed it, nor on the
call's width. A tile past the last row repeats the last row (its results are not written).

On a 2-core AMD EPYC, with tiles of 4 rows for a last 1-4 rows, SmolLM2's 121 products took, in ms at 1 / 4 /
8 / 16 / 232 rows: 17.7 / 18.5 / 20.1 / 30.7 / 309.1, against 20.0 / 20.6 / 24.5 / 31.8 / 306.3 for oneDNN's
prepacked inner product (the layout inductor's weight freezing uses) and 45.6 / 62.8 / 56.9 / 69.1 / 402.9 for
``F.linear``; reading the weights alone took 15.3 ms (``bench/blocked_gemm.py``, ``bench/results/blocked_gemm.md``).
From 9 rows on it is bound by the cores' multiply-adds. Tiles of 6 or 16 rows, a k-major input, prefetching 4
KB or 16 KB ahead, and 8 rows of two blocks at a time (16 chains) measured the same or slower.
"""

from __future__ import annotations

import threading
from typing import Sequence

import numba as nb
import numpy as np
import torch
from llvmlite import binding as llvm
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

#: Output columns per block: two AVX2 vectors of float32.
LANES = 16
#: Input rows per tile of one block; a last tile of 2-4 rows is 4 wide over two blocks. An 8-row tile does eight
#: multiply-adds per weight vector, still under the memory stream when it is prefetched.
TILE = 8
#: How far ahead of the multiply-adds a tile of 1-4 rows prefetches its blocks, in 64-byte weight vectors (a tile
#: of 8 prefetches the next block instead). Without it, SmolLM2's products at 8 rows took 22.0 ms on a 2-core AMD
#: EPYC, with 16 vectors (1 KB) ahead 18.9.
PREFETCH = 16
#: Blocks a thread takes at a time: a single row walks four blocks together, so that four chains of
#: multiply-adds hide each other's latency.
GROUP = 4

_MATH = {"contract"}  # fused multiply-add, nothing reordered: each element's sum runs k = 0 .. in-1
_PREFETCH_NAME = "llvm.prefetch.p0" if llvm.llvm_version_info >= (15,) else "llvm.prefetch.p0i8"


@intrinsic
def _prefetch(typingctx, array, index):  # pragma: no cover - compiled
    """Prefetch the cache line of ``array``'s flat element ``index`` for reading (LLVM's ``llvm.prefetch``: a hint,
    which never faults)."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fn_type = ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fn_type, _PREFETCH_NAME)
        builder.call(fn, [address, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])  # read, keep, data
        return context.get_dummy_value()
    return types.void(array, types.intp), codegen


@nb.njit(fastmath=_MATH, cache=True, nogil=True, inline="always")
def _tile8(w: np.ndarray, x: np.ndarray, y: np.ndarray, b: int, m0: int, acc: np.ndarray) -> None:  # pragma: no cover
    """Rows ``m0 .. m0+7`` of block ``b`` (rows past the last repeat it, unwritten): eight chains per weight vector.

    At each ``k`` it prefetches the next block's line ``k``, so the next block arrives while this one is
    multiplied: 8 rows of SmolLM2's products took 35.3 ms prefetching 16 lines ahead in the same block, 31.0
    this way (the same run, interleaved; 16 rows 47.3 and 42.6); doing both measured the same.

    A tile's rows are written out one by one: a loop over them (its length a compile-time constant) ran 1.5-2x
    slower at 2 and 8 rows, its sums no longer kept in registers."""
    k_dim, last = w.shape[1], x.shape[0] - 1
    start, end = b * k_dim * LANES, w.shape[0] * k_dim * LANES - 1
    i1, i2, i3, i4 = m0 + 1, m0 + 2, m0 + 3, m0 + 4
    i5, i6, i7 = min(m0 + 5, last), min(m0 + 6, last), min(m0 + 7, last)
    acc[:] = 0.0
    nxt = start + k_dim * LANES
    for k in range(k_dim):
        _prefetch(w, min(nxt + k * LANES, end))
        x0, x1, x2, x3 = x[m0, k], x[i1, k], x[i2, k], x[i3, k]
        x4, x5, x6, x7 = x[i4, k], x[i5, k], x[i6, k], x[i7, k]
        for j in range(LANES):
            v = w[b, k, j]
            acc[0, j] += x0 * v
            acc[1, j] += x1 * v
            acc[2, j] += x2 * v
            acc[3, j] += x3 * v
            acc[4, j] += x4 * v
            acc[5, j] += x5 * v
            acc[6, j] += x6 * v
            acc[7, j] += x7 * v
    for r in range(min(8, last + 1 - m0)):
        for j in range(LANES):
            y[m0 + r, b * LANES + j] = acc[r, j]


@nb.njit(fastmath=_MATH, cache=True, nogil=True, inline="always")
def _tile4_pair(w: np.ndarray, x: np.ndarray, y: np.ndarray, b: int, c: int, m0: int,
                acc: np.ndarray) -> None:  # pragma: no cover - compiled
    """Rows ``m0 .. m0+3`` (rows past the last repeat it, unwritten) of blocks ``b`` and ``c`` together: eight
    chains per step of ``k``, where one block alone would leave the multiply-add latency exposed. ``c == b``
    (a run's last single block) computes and writes the block twice, the same bits."""
    k_dim, last = w.shape[1], x.shape[0] - 1
    sb, sc, end = b * k_dim * LANES, c * k_dim * LANES, w.shape[0] * k_dim * LANES - 1
    i1, i2, i3 = min(m0 + 1, last), min(m0 + 2, last), min(m0 + 3, last)
    acc[:] = 0.0
    for k in range(k_dim):
        _prefetch(w, min(sb + (k + PREFETCH) * LANES, end))
        _prefetch(w, min(sc + (k + PREFETCH) * LANES, end))
        x0, x1, x2, x3 = x[m0, k], x[i1, k], x[i2, k], x[i3, k]
        for j in range(LANES):
            v, u = w[b, k, j], w[c, k, j]
            acc[0, j] += x0 * v
            acc[1, j] += x1 * v
            acc[2, j] += x2 * v
            acc[3, j] += x3 * v
            acc[4, j] += x0 * u
            acc[5, j] += x1 * u
            acc[6, j] += x2 * u
            acc[7, j] += x3 * u
    for r in range(min(4, last + 1 - m0)):
        for j in range(LANES):
            y[m0 + r, b * LANES + j] = acc[r, j]
            y[m0 + r, c * LANES + j] = acc[4 + r, j]


@nb.njit(fastmath=_MATH, cache=True, nogil=True, inline="always")
def _row_quad(w: np.ndarray, x: np.ndarray, y: np.ndarray, b: int, m: int, acc: np.ndarray) -> None:  # pragma: no cover
    """Row ``m`` of blocks ``b .. b+3`` together (the caller passes whole groups): four chains per step of
    ``k``, four weight streams."""
    k_dim = w.shape[1]
    s0, end = b * k_dim * LANES, w.shape[0] * k_dim * LANES - 1
    step = k_dim * LANES
    acc[:] = 0.0
    for k in range(k_dim):
        ahead = s0 + (k + PREFETCH) * LANES
        _prefetch(w, min(ahead, end))
        _prefetch(w, min(ahead + step, end))
        _prefetch(w, min(ahead + 2 * step, end))
        _prefetch(w, min(ahead + 3 * step, end))
        x0 = x[m, k]
        for j in range(LANES):
            acc[0, j] += x0 * w[b, k, j]
            acc[1, j] += x0 * w[b + 1, k, j]
            acc[2, j] += x0 * w[b + 2, k, j]
            acc[3, j] += x0 * w[b + 3, k, j]
    for g in range(4):
        for j in range(LANES):
            y[m, (b + g) * LANES + j] = acc[g, j]


@nb.njit(parallel=True, fastmath=_MATH, cache=True, nogil=True)
def _product(w: np.ndarray, x: np.ndarray, y: np.ndarray, threads: int) -> None:  # pragma: no cover - compiled
    """``y[m, b*16 + j] = sum_k x[m, k] w[b, k, j]`` for ``w [blocks, in, 16]``, ``x [rows, in]``, ``y [rows,
    blocks*16]`` (all C-contiguous float32).

    ``threads`` runs of blocks (one per thread: :func:`match_threads`' count), each walked four blocks at a time
    by every tile of rows: tiles of 5-8 rows one block at a time, of 2-4 rows two blocks at a time, a last
    single row four blocks at a time (two at a time when the run has fewer than four blocks left)."""
    blocks = w.shape[0]
    rows = x.shape[0]
    for t in nb.prange(threads):
        acc = np.empty((TILE, LANES), np.float32)
        lo, hi = t * blocks // threads, (t + 1) * blocks // threads
        for g in range(lo, hi, GROUP):
            n = min(GROUP, hi - g)
            m0 = 0
            while m0 < rows:
                left = rows - m0
                if left >= 5:
                    for b in range(g, g + n):
                        _tile8(w, x, y, b, m0, acc)
                    m0 += 8
                elif left >= 2:
                    for b in range(g, g + n, 2):
                        _tile4_pair(w, x, y, b, min(b + 1, g + n - 1), m0, acc)
                    m0 += 4
                else:
                    if n == GROUP:
                        _row_quad(w, x, y, g, m0, acc)
                    else:
                        for b in range(g, g + n, 2):
                            _tile4_pair(w, x, y, b, min(b + 1, g + n - 1), m0, acc)
                    m0 += 1


@nb.njit(fastmath=_MATH, cache=True, nogil=True)
def _add_rows(out: np.ndarray, delta: np.ndarray, select: np.ndarray) -> None:  # pragma: no cover - compiled
    """``out[n, :] += delta[n, :out.shape[1]]`` for the rows ``n`` where ``select``."""
    for n in range(out.shape[0]):
        if select[n]:
            for c in range(out.shape[1]):
                out[n, c] += delta[n, c]


def lora_add(x: np.ndarray, select: np.ndarray, a_weight: "BlockedWeight", b_weight: "BlockedWeight",
             out: np.ndarray) -> None:
    """``out[n] += (x[n] @ A.T) @ B.T`` for the rows ``n`` where ``select`` (bool ``[N]``) holds, ``x [N, in]`` and
    ``out [N, out]`` C-contiguous float32; ``A [R, in]`` and ``B [out, R']`` (``R' = R`` rounded up to whole
    blocks) as :class:`BlockedWeight`. Three calls (the two blocked products and the masked add) for a LoRA
    group, on the threads :func:`match_threads` last set; rows not selected are left as they are."""
    a = np.empty((x.shape[0], a_weight.tensor.shape[0] * LANES), np.float32)
    threads = _thread_count()
    _product(a_weight.array, x, a, threads)
    delta = np.empty((x.shape[0], b_weight.tensor.shape[0] * LANES), np.float32)
    _product(b_weight.array, a, delta, threads)
    _add_rows(out, delta, select)


def _place_rows(blocked: torch.Tensor, weight: torch.Tensor, row: int) -> None:
    """Copy ``weight [n, in]`` into rows ``row .. row + n - 1`` of the matrix ``blocked [blocks, in, 16]`` lays out
    (row ``r`` is ``blocked[r // 16, :, r % 16]``): one copy for the whole blocks, one per row of a block it fills
    only in part."""
    end = row + weight.shape[0]
    first, last = -(-row // LANES), end // LANES  # the whole blocks are [first, last)
    if first < last:
        lo = first * LANES - row
        blocked[first:last].copy_(weight[lo:lo + (last - first) * LANES].reshape(last - first, LANES, -1)
                                  .transpose(1, 2))
        edges = [*range(row, first * LANES), *range(last * LANES, end)]
    else:
        edges = list(range(row, end))
    for r in edges:
        blocked[r // LANES, :, r % LANES].copy_(weight[r - row])


_threads = threading.local()  # Numba's thread count is per calling thread


def match_threads() -> int:
    """Run Numba's parallel kernels on as many threads as torch uses (``torch.get_num_threads()``) from this thread,
    and return that count. Checked on every call, set only when torch's count changed: ``numba.get_num_threads``
    costs about 6 us, which the 121 products of a SmolLM2 forward would pay 121 times."""
    threads = torch.get_num_threads()
    if getattr(_threads, "torch", None) != threads:
        _threads.count = min(threads, nb.config.NUMBA_NUM_THREADS)
        nb.set_num_threads(_threads.count)
        _threads.torch = threads
    return _threads.count


def _thread_count() -> int:
    """The thread count :func:`match_threads` last set from this thread (setting it if it never ran here)."""
    count = getattr(_threads, "count", None)
    return match_threads() if count is None else count


class BlockedWeight:
    """A weight ``[out, in]`` laid out once as ``[ceil(out / 16), in, 16]`` float32 (zero columns pad ``out`` to a
    multiple of 16); calling it runs the product.

    Parameters
    ----------
    weight:
        ``[out, in]`` float32 on the CPU, or several ``[out_i, in]`` to stack (``[sum(out_i), in]``: fused
        projections). Each is copied straight into the layout, with no intermediate copy, so packing a model
        holds its source weights and the packed ones at most (a stacked copy and a padded one would add two
        more of each: SmolLM2's 113 MB output head three times over; ``graphrt.load("smollm2")`` peaked at 1,369
        MiB with them, 1,116 without).
    where:
        What the weight is, for errors.
    """

    def __init__(self, weight: torch.Tensor | Sequence[torch.Tensor], where: str) -> None:
        parts = [weight] if isinstance(weight, torch.Tensor) else list(weight)
        for i, w in enumerate(parts):
            if w.dim() != 2 or w.dtype != torch.float32 or w.device.type != "cpu" or \
                    w.shape[-1] != parts[0].shape[-1]:
                part = f" (part {i} of {len(parts)}, in = {parts[0].shape[-1]} in part 0)" if len(parts) > 1 else ""
                raise ValueError(f"{where}: expected a 2-D float32 CPU weight [out, in], found {tuple(w.shape)} "
                                 f"{w.dtype} on {w.device}{part}")
        self.where = where
        self.out_features, self.in_features = sum(w.shape[0] for w in parts), parts[0].shape[1]
        blocks = -(-self.out_features // LANES)
        self.tensor = torch.zeros(blocks, self.in_features, LANES, dtype=torch.float32)  # [blocks, in, 16]
        row = 0
        for w in parts:
            _place_rows(self.tensor, w.detach(), row)
            row += w.shape[0]
        self.array = self.tensor.numpy()  # the same memory, as the kernel takes it

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return self.tensor.numel() * self.tensor.element_size()

    def into(self, x: np.ndarray, y: np.ndarray) -> None:
        """``y = x @ weight.T`` for C-contiguous float32 ``x [rows, in]`` and ``y [rows, out]`` (``out`` a multiple
        of :data:`LANES`), unchecked: the caller's buffers, on the threads :func:`match_threads` last set."""
        _product(self.array, x, y, _thread_count())

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x [..., in] @ weight.T (+ bias) -> [..., out]``, contiguous; every row's bits are the same at any row
        count. Runs on as many threads as torch does (``torch.get_num_threads()``) and releases the GIL."""
        if x.dtype != torch.float32 or x.shape[-1] != self.in_features:
            raise ValueError(f"{self.where}: expected float32 input [..., {self.in_features}], found "
                             f"{x.dtype} {tuple(x.shape)}")
        rows = x.numel() // x.shape[-1]
        x2 = x.reshape(rows, self.in_features).contiguous()  # [rows, in]
        blocks = self.tensor.shape[0]
        y = torch.empty(rows, blocks * LANES, dtype=torch.float32)  # [rows, blocks*16]
        _product(self.array, x2.detach().numpy(), y.numpy(), match_threads())
        if blocks * LANES != self.out_features:
            y = y[:, :self.out_features].contiguous()
        if bias is not None:
            y.add_(bias)
        return y.view(*x.shape[:-1], self.out_features)


__all__ = ["GROUP", "LANES", "PREFETCH", "TILE", "BlockedWeight", "lora_add", "match_threads"]
