"""The context n-gram lookup: draft tokens copied from the request's own context.

``ngram_lookup(context, length) {k, max_ngram, min_ngram} -> (draft [k], count)``
looks at ``ctx = context[:length]`` (the prompt and the output so far). For
``n`` from ``max_ngram`` down to ``min_ngram`` it searches earlier occurrences
of the last ``n`` tokens ``ctx[length-n:]``; the first ``n`` with a match wins
and, among its matches, the most recent one (start ``j < length - n``). The
draft continues the context from there: ``draft[i] = ext[j + n + i]`` where
``ext`` is ``ctx`` followed by the draft itself, so a match close to the end
repeats its period (``a b a b`` drafts ``a b a b ...``). ``count`` is ``k``
when there is a match and 0 otherwise (the draft is then all zeros).

>>> import torch
>>> d, c = ngram_lookup_ref(torch.tensor([5, 6, 7, 9, 5, 6, 0, 0]), torch.tensor(6), k=3, max_ngram=2, min_ngram=1)
>>> d.tolist(), int(c)
([7, 9, 5], 3)

The reference is tensor code throughout (no host read of ``length``), so it
runs where the context lives. On the host its forty-odd small tensor ops cost
about 200 us a call, more than the rest of ``auto``'s cycle together; the
``"cpu"`` kernel (:func:`ngram_lookup_host`) does the same search as a Numba scan.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import torch

from graphrt.registry import REQUIRED, OpDef, register_op
from graphrt.types import TensorType, Type


def _infer(ts: list[Type], attrs: dict) -> list[Type]:
    ctx, length = ts
    if not isinstance(ctx, TensorType) or ctx.dtype != "i64" or ctx.rank != 1:
        raise ValueError(f"context: expected i64[N], found {ctx}")
    if not isinstance(length, TensorType) or length.dtype != "i64" or length.shape:
        raise ValueError(f"length: expected a scalar i64, found {length}")
    k, hi, lo = attrs["k"], attrs["max_ngram"], attrs["min_ngram"]
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"attribute k: expected an int >= 1, found {k!r}")
    if not (isinstance(hi, int) and isinstance(lo, int) and 1 <= lo <= hi):
        raise ValueError(f"attributes min_ngram, max_ngram: expected ints with 1 <= min_ngram <= max_ngram, "
                         f"found {lo!r}, {hi!r}")
    return [TensorType("i64", (k,)), TensorType("i64", ())]


def ngram_lookup_ref(context: torch.Tensor, length: torch.Tensor, *, k: int, max_ngram: int = 3,
                     min_ngram: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The meaning of ``ngram_lookup`` (see the module docstring).

    Parameters
    ----------
    context : torch.Tensor
        ``[N]`` int64 buffer; only ``context[:length]`` is read.
    length : torch.Tensor
        Scalar int64, the context's length (at most ``N``).
    k : int
        Draft length.
    max_ngram, min_ngram : int
        The n-gram sizes tried, longest first.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        ``draft [k]`` int64 and ``count`` (scalar int64: ``k`` or 0).
    """
    N = context.shape[0]
    dev = context.device
    found = torch.zeros((), dtype=torch.bool, device=dev)
    src = torch.zeros((), dtype=torch.int64, device=dev)  # where the continuation starts
    for n in range(max_ngram, min_ngram - 1, -1):
        if N < n + 1:
            continue
        suffix = context[(length - n + torch.arange(n, device=dev)).clamp(0, N - 1)]  # [n]
        starts = torch.arange(N - n + 1, device=dev)  # [W]
        hits = (context.unfold(0, n, 1) == suffix).all(-1) & (starts < length - n) & (length > n)  # [W]
        last = torch.where(hits, starts, -1).max()
        take = ~found & (last >= 0)
        src = torch.where(take, last + n, src)
        found = found | take
    period = (length - src).clamp(min=1)
    idx = (src + torch.arange(k, device=dev) % period).clamp(0, N - 1)  # [k]
    draft = torch.where(found, context[idx], 0)
    return draft, torch.where(found, k, 0)


def _lookup(ctx: np.ndarray, length: int, max_ngram: int, min_ngram: int,
            draft: np.ndarray) -> int:  # pragma: no cover - compiled by _lookup_kernel
    """:func:`ngram_lookup_ref` on ``ctx`` (int64): fills ``draft [k]`` and returns the count. Scans back from the
    end and stops at the most recent match, so a context with a recent repeat costs a few comparisons."""
    n_ctx, k = ctx.shape[0], draft.shape[0]
    for n in range(max_ngram, min_ngram - 1, -1):
        if length <= n or n_ctx < n + 1:
            continue
        for j in range(length - n - 1, -1, -1):  # starts j < length - n, the most recent first
            t = 0
            while t < n and ctx[j + t] == ctx[length - n + t]:
                t += 1
            if t == n:
                src = j + n
                period = max(length - src, 1)
                for i in range(k):
                    draft[i] = ctx[min(src + i % period, n_ctx - 1)]
                return k
    draft[:] = 0
    return 0


@functools.cache
def _lookup_kernel() -> Callable[..., int]:
    """:func:`_lookup` compiled by Numba, on first use (importing graphrt does not import Numba)."""
    import numba

    return numba.njit(cache=True, nogil=True)(_lookup)


def ngram_lookup_host(context: torch.Tensor, length: torch.Tensor, *, k: int, max_ngram: int = 3,
                      min_ngram: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`ngram_lookup_ref` for host tensors, as a Numba scan (the op's ``"cpu"`` kernel): the same draft and
    count, in about 6 us where the reference's tensor ops take 200 (auto runs it every cycle of every request)."""
    ctx = context.numpy()
    draft = np.empty(k, dtype=np.int64)
    count = _lookup_kernel()(ctx, min(int(length), ctx.shape[0]), max_ngram, min_ngram, draft)
    return torch.from_numpy(draft), torch.from_numpy(np.array(count, dtype=np.int64))


register_op(OpDef(
    "ngram_lookup", ("context", "length"), {"k": REQUIRED, "max_ngram": 3, "min_ngram": 1}, _infer, ngram_lookup_ref,
    doc="Draft k tokens from the context's own n-grams: the most recent earlier occurrence of the longest matching "
        "suffix (max_ngram down to min_ngram) and what followed it; count is k on a match, else 0.",
    kernels={"cpu": lambda device, simulator: ngram_lookup_host},
))
