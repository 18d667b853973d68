"""A Numba matrix-vector product against oneDNN's packed one, over SmolLM2's 121 projection shapes.

Why it is not graphrt's linear path: lossless decoding needs a token's logits to be the same bit for bit in
a 1-token AR step and in a wide verification call, so whatever computes a product must give each row the
same result at every row count. oneDNN does (``tests/test_packed_linear.py``). A Numba kernel can too (each
output element through the same compiled loop), but then it must also serve the wide calls, and mixing the
two (Numba for one row, oneDNN for more) would not be width-invariant. This script measures both kernels
at each row count over a stack of SmolLM2-shaped random weights (30 layers of q/k/v fused 576->960,
o 576->576, gate/up fused 576->3072, down 1536->576, plus the 576->49152 head: 538 MB, streamed from
memory), and checks the Numba kernel's row 0 against its own 1-row result.

* ``numba-rows``: each output element is one dot product over ``k`` (fastmath, vectorised by LLVM); weight
  rows are split over the threads; a weight row is read once for all input rows.
* ``numba-2x2``: two weight rows by two input rows per pass (four dot products sharing loads).
* ``onednn``: ``torch.ops.mkldnn._linear_pointwise`` on ``_reorder_linear_weight``'s weight.

Run: ``python bench/numba_gemv.py [--repeats 7] [--out bench/results/numba_gemv.md]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba as nb
import numpy as np
import torch
from numba import prange

SHAPES = ((960, 576), (576, 576), (3072, 576), (576, 1536))  # (out, in) per layer
HEAD = (49152, 576)
ROWS = (1, 2, 3, 4, 8, 16)


@nb.njit(parallel=True, fastmath=True, cache=True)
def gemm_rows(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:  # pragma: no cover - compiled
    """``y[m, i] = sum_k w[i, k] x[m, k]``, one dot product per element."""
    n, k_dim = w.shape
    for i in prange(n):
        for m in range(x.shape[0]):
            acc = np.float32(0.0)
            for k in range(k_dim):
                acc += w[i, k] * x[m, k]
            y[m, i] = acc


@nb.njit(fastmath=True, inline="always")
def _dot2x2(w0, w1, x0, x1, k_dim):  # pragma: no cover - compiled
    a00 = np.float32(0.0)
    a01 = np.float32(0.0)
    a10 = np.float32(0.0)
    a11 = np.float32(0.0)
    for k in range(k_dim):
        u, v, p, q = w0[k], w1[k], x0[k], x1[k]
        a00 += u * p
        a01 += u * q
        a10 += v * p
        a11 += v * q
    return a00, a01, a10, a11


@nb.njit(parallel=True, fastmath=True, cache=True)
def gemm_2x2(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:  # pragma: no cover - compiled
    """``y = x w^T`` two weight rows by two input rows per pass (an odd last one paired with itself)."""
    n, k_dim = w.shape
    m_dim = x.shape[0]
    for ip in prange((n + 1) // 2):
        i0 = 2 * ip
        i1 = min(i0 + 1, n - 1)
        for mp in range((m_dim + 1) // 2):
            m0 = 2 * mp
            m1 = min(m0 + 1, m_dim - 1)
            a00, a01, a10, a11 = _dot2x2(w[i0], w[i1], x[m0], x[m1], k_dim)
            y[m0, i0], y[m1, i0], y[m0, i1], y[m1, i1] = a00, a01, a10, a11


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    nb.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(s, dtype=np.float32) for _ in range(30) for s in SHAPES]
    weights.append(rng.standard_normal(HEAD, dtype=np.float32))
    packed = [torch.ops.mkldnn._reorder_linear_weight(torch.from_numpy(w)) for w in weights]
    inputs = {k: rng.standard_normal((max(ROWS), k), dtype=np.float32) for k in (576, 1536)}
    lines = ["| rows | numba-rows ms | numba-2x2 ms | onednn ms | numba-rows row 0 = its 1-row result | "
             "numba-2x2 row 0 = its 1-row result |", "|---:|---:|---:|---:|---|---|"]
    first: dict[str, np.ndarray] = {}
    for m in ROWS:
        xs = {k: np.ascontiguousarray(v[:m]) for k, v in inputs.items()}
        xt = {k: torch.from_numpy(v) for k, v in xs.items()}
        ys = {w.shape[0]: np.empty((m, w.shape[0]), np.float32) for w in weights}

        def stack(kernel):
            return lambda: [kernel(w, xs[w.shape[1]], ys[w.shape[0]]) for w in weights]

        def onednn():
            for w, p in zip(weights, packed):
                torch.ops.mkldnn._linear_pointwise(xt[w.shape[1]], p, None, "none", [], "")

        runs = {"numba-rows": stack(gemm_rows), "numba-2x2": stack(gemm_2x2), "onednn": onednn}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for f in runs.values():
            f()  # compile / warm
        for _ in range(args.repeats):
            for name, f in runs.items():
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
        same = []
        for name, kernel in (("numba-rows", gemm_rows), ("numba-2x2", gemm_2x2)):
            y = np.empty((m, 3072), np.float32)
            kernel(weights[2], xs[576], y)
            first.setdefault(name, y[0].copy())
            same.append(str(bool(np.array_equal(y[0], first[name]))))
        med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        lines.append(f"| {m} | {med['numba-rows']:.1f} | {med['numba-2x2']:.1f} | {med['onednn']:.1f} | "
                     f"{same[0]} | {same[1]} |")
        print(lines[-1], flush=True)
    text = (f"# Numba against oneDNN, SmolLM2's projections (538 MB per pass), {args.threads} threads, "
            f"median of {args.repeats}\n\n" + "\n".join(lines) + "\n")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
