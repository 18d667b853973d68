"""A float32 matrix product for CPU decoding that reads its weights from memory once per call at any width, and
gives each row the same bits at every row count (Numba).

A decode step of a model like SmolLM2-135M streams every weight once per forward (538 MB in float32); its
products have 1 to a few hundred rows (one token, a verification block, a batch of streams, a prompt). Lossless
speculative decoding needs a token's logits to be the same, bit for bit, whether the token ran alone (an AR
step) or inside a wider call (a verification block, other streams, a prompt packed beside it): whatever
computes a product must give each row the same result at every row count.

The weight ``[out, in]`` is laid out once as ``[out / 16, in, 16]``: blocks of 16 output columns, each stored
``in``-major, so a block is one contiguous stream (36 KB for ``in = 576``). A thread takes a block and, for
each tile of 4 input rows, keeps the tile's ``4 x 16`` sums while it walks the block once; at each ``k`` every
row's input value is broadcast against the block's 16 weights (two AVX2 vectors, or one AVX-512 vector). The
block stays in the core's cache between tiles, so the weights are read from memory once per call whatever its
width, and the arithmetic per weight byte grows with the tile, so up to 4 rows cost what one costs.

Every output element is one chain of fused multiply-adds over ``k = 0 .. in-1`` in order, vectorised across
the 16 output columns only (no reassociation is allowed; ``contract`` lets LLVM fuse each multiply-add), so
its bits depend on its row's input and the weights only: not on the tile that computed it, nor on the
call's width. A tile past the last row repeats the last row (its results are not written).

SmolLM2's 121 products on the 2-core machine, ms at 1 / 4 / 8 / 16 / 232 rows: 18.3 / 19.7 / 24.3 / 34.2 /
327.2, against 21.2 / 21.0 / 24.7 / 31.8 / 311.3 for oneDNN's prepacked inner product (the layout inductor's
weight freezing uses) and 44.4 / 62.7 / 57.2 / 68.1 / 400.5 for ``F.linear`` (``bench/blocked_gemm.py``,
``bench/results/blocked_gemm.md``). At 1-4 rows it streams the weights at 27-29 GB/s; from 5 rows on it is
bound by the cores' multiply-adds (a tile of 4 rows over all 538 MB takes 5-6 ms with the weights in cache).
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch

#: Output columns per block: two AVX2 vectors of float32.
LANES = 16
#: Input rows per tile. Tiles of 6 and 8 rows measured the same at 1 to 232 rows; 4 is the simplest.
TILE = 4

_MATH = {"contract"}  # fused multiply-add, nothing reordered: each element's sum runs k = 0 .. in-1


@nb.njit(parallel=True, fastmath=_MATH, cache=True, nogil=True)
def _product(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:  # pragma: no cover - compiled
    """``y[m, b*16 + j] = sum_k x[m, k] w[b, k, j]`` for ``w [blocks, in, 16]``, ``x [rows, in]``, ``y [rows,
    blocks*16]`` (all C-contiguous float32)."""
    blocks, k_dim, _ = w.shape
    rows = x.shape[0]
    for b in nb.prange(blocks):
        acc = np.empty((TILE, LANES), np.float32)
        c0 = b * LANES
        for m0 in range(0, rows, TILE):
            last = rows - 1 - m0  # a tile past the last row repeats it
            i1, i2, i3 = m0 + min(1, last), m0 + min(2, last), m0 + min(3, last)
            acc[:] = 0.0
            for k in range(k_dim):
                x0, x1, x2, x3 = x[m0, k], x[i1, k], x[i2, k], x[i3, k]
                for j in range(LANES):
                    v = w[b, k, j]
                    acc[0, j] += x0 * v
                    acc[1, j] += x1 * v
                    acc[2, j] += x2 * v
                    acc[3, j] += x3 * v
            for r in range(min(TILE, last + 1)):
                for j in range(LANES):
                    y[m0 + r, c0 + j] = acc[r, j]


class BlockedWeight:
    """A weight ``[out, in]`` laid out once as ``[ceil(out / 16), in, 16]`` float32 (zero columns pad ``out`` to a
    multiple of 16); calling it runs the product.

    Parameters
    ----------
    weight:
        ``[out, in]`` float32 on the CPU.
    where:
        What the weight is, for errors.
    """

    def __init__(self, weight: torch.Tensor, where: str) -> None:
        if weight.dim() != 2 or weight.dtype != torch.float32 or weight.device.type != "cpu":
            raise ValueError(f"{where}: expected a 2-D float32 CPU weight [out, in], found {tuple(weight.shape)} "
                             f"{weight.dtype} on {weight.device}")
        self.where = where
        self.out_features, self.in_features = weight.shape
        blocks = -(-self.out_features // LANES)
        padded = torch.zeros(blocks * LANES, self.in_features, dtype=torch.float32)
        padded[:self.out_features] = weight.detach()
        self.tensor = padded.view(blocks, LANES, self.in_features).transpose(1, 2).contiguous()  # [blocks, in, 16]
        self.array = self.tensor.numpy()  # the same memory, as the kernel takes it

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return self.tensor.numel() * self.tensor.element_size()

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
        threads = torch.get_num_threads()
        if nb.get_num_threads() != threads:
            nb.set_num_threads(min(threads, nb.config.NUMBA_NUM_THREADS))
        _product(self.array, x2.detach().numpy(), y.numpy())
        if blocks * LANES != self.out_features:
            y = y[:, :self.out_features].contiguous()
        if bias is not None:
            y.add_(bias)
        return y.view(*x.shape[:-1], self.out_features)


__all__ = ["LANES", "TILE", "BlockedWeight"]
