"""Hypothesis strategies and settings for kernel tests (reached through :mod:`graphrt.testing`).

Importing this module imports hypothesis; :mod:`graphrt.testing` imports it only
when one of these names is first asked for, so the core never needs hypothesis.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from graphrt.cuda_kernels._launch import simulator_enabled

__all__ = ["blocks", "confidences", "drafts", "kernel_settings", "kernel_threads", "logits", "masks",
           "sampling_params", "vocab_sizes"]

MASK_TOKEN_ID = 0
"""Default mask token id of :func:`blocks` (small, so collisions with candidates happen)."""


def kernel_threads() -> st.SearchStrategy[int | None]:
    """Threads per block to test with: 1, 8 or 32 in the simulator (sizes that are not multiples
    of them come from :func:`vocab_sizes`); the launcher's default (``None``) on a GPU."""
    return st.sampled_from([1, 8, 32]) if simulator_enabled() else st.just(None)


settings.register_profile(
    "kernels-ci", derandomize=True, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "kernels-dev", deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def kernel_settings(max_examples: int = 20, **overrides: Any) -> settings:
    """Hypothesis settings for kernel tests: the ``kernels-ci`` profile (derandomized, no example
    database) when the ``CI`` environment variable is set, else ``kernels-dev``; no deadline
    (simulated kernels are slow); ``max_examples`` kept small.

    Use as a decorator: ``@kernel_settings(max_examples=10)``; it does not change the global profile.
    """
    profile = "kernels-ci" if os.environ.get("CI", "") not in ("", "0", "false") else "kernels-dev"
    return settings(settings.get_profile(profile), max_examples=max_examples, **overrides)


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------
def vocab_sizes(min_value: int = 1, max_value: int = 100, block: int = 32) -> st.SearchStrategy[int]:
    """Vocabulary sizes, biased towards the awkward ones for a thread block of ``block`` threads.

    Draws the edge sizes ``1, block - 1, block + 1, 2 * block + 1`` (and
    ``block`` itself) often, otherwise any size in ``[min_value, max_value]``.
    """
    edges = [v for v in (1, 2, block - 1, block, block + 1, 2 * block - 1, 2 * block + 1)
             if min_value <= v <= max_value]
    anywhere = st.integers(min_value, max_value)
    return st.one_of(st.sampled_from(edges), anywhere) if edges else anywhere


_SPECIAL_ROWS = ("normal", "ties", "all_neg_inf", "all_nan", "pos_inf", "extreme", "one_finite", "constant")


@st.composite
def logits(
    draw: st.DrawFn,
    batch: int | st.SearchStrategy[int] = st.integers(1, 3),
    vocab: int | st.SearchStrategy[int] | None = None,
    length: int | st.SearchStrategy[int] | None = None,
    dtype: torch.dtype = torch.float32,
    allow_nan: bool = True,
    allow_inf: bool = True,
) -> torch.Tensor:
    """Logits ``[B, V]`` (or ``[B, L, V]`` when ``length`` is given) with awkward rows.

    Each row is one of: normal values; values drawn from a pool of 3 (ties);
    all ``-inf``; all NaN; some ``+inf``; extreme magnitudes (near the
    dtype's max and min normal); a single finite entry among ``-inf``; a
    constant row. NaN/inf rows and entries are left out when ``allow_nan`` /
    ``allow_inf`` are false.

    Parameters
    ----------
    batch, vocab, length:
        Ints or strategies; ``vocab`` defaults to :func:`vocab_sizes`.
    dtype:
        Torch float dtype of the result.
    """
    b = draw(batch) if isinstance(batch, st.SearchStrategy) else batch
    v = draw(vocab if vocab is not None else vocab_sizes()) if not isinstance(vocab, int) else vocab
    n = 1 if length is None else (draw(length) if isinstance(length, st.SearchStrategy) else length)
    kinds = [k for k in _SPECIAL_ROWS
             if (allow_nan or k != "all_nan") and (allow_inf or k not in ("all_neg_inf", "pos_inf", "one_finite"))]
    finfo = torch.finfo(dtype)
    rows = []
    for _ in range(b * n):
        kind = draw(st.sampled_from(kinds))
        rows.append(_logit_row(draw, kind, v, finfo, allow_nan, allow_inf))
    x = torch.tensor(rows, dtype=torch.float64).to(dtype)  # [B * L, V]
    return x.reshape(b, v) if length is None else x.reshape(b, n, v)


def _logit_row(draw: st.DrawFn, kind: str, v: int, finfo: torch.finfo, allow_nan: bool,
               allow_inf: bool) -> list[float]:
    small = st.floats(-8.0, 8.0, allow_nan=False, allow_infinity=False, width=32)
    if kind == "ties":
        pool = draw(st.lists(small, min_size=1, max_size=3))
        row = draw(st.lists(st.sampled_from(pool), min_size=v, max_size=v))
    elif kind == "all_neg_inf":
        row = [-math.inf] * v
    elif kind == "all_nan":
        row = [math.nan] * v
    elif kind == "extreme":
        big = float(finfo.max) / 2
        pool = [big, -big, float(finfo.tiny), -float(finfo.tiny), 0.0, -0.0]
        row = draw(st.lists(st.sampled_from(pool), min_size=v, max_size=v))
    elif kind == "one_finite":
        row = [-math.inf] * v
        row[draw(st.integers(0, v - 1))] = draw(small)
    elif kind == "constant":
        row = [draw(small)] * v
    else:
        row = draw(st.lists(small, min_size=v, max_size=v))
        if kind == "pos_inf":
            for _ in range(draw(st.integers(1, min(2, v)))):
                row[draw(st.integers(0, v - 1))] = math.inf
    if kind in ("normal", "ties") and (allow_nan or allow_inf):
        specials = ([math.nan] if allow_nan else []) + ([-math.inf] if allow_inf else [])
        for _ in range(draw(st.integers(0, min(2, v - 1)))):
            row[draw(st.integers(0, v - 1))] = draw(st.sampled_from(specials))
    return row


@st.composite
def masks(draw: st.DrawFn, batch: int, length: int) -> torch.Tensor:
    """Boolean masks ``[B, L]``; each row is all masked, none masked, or random (often)."""
    rows = []
    for _ in range(batch):
        kind = draw(st.sampled_from(("all", "none", "random", "random", "seed_only")))
        if kind == "all":
            rows.append([True] * length)
        elif kind == "none":
            rows.append([False] * length)
        elif kind == "seed_only":  # a fresh diffusion block: [seed, MASK x (L - 1)]
            rows.append([False] + [True] * (length - 1))
        else:
            rows.append(draw(st.lists(st.booleans(), min_size=length, max_size=length)))
    return torch.tensor(rows, dtype=torch.bool).reshape(batch, length)


@st.composite
def blocks(draw: st.DrawFn, batch: int | st.SearchStrategy[int] = st.integers(1, 3),
           length: int | st.SearchStrategy[int] = st.integers(1, 12), vocab: int = 8,
           mask_token_id: int = MASK_TOKEN_ID) -> torch.Tensor:
    """Diffusion blocks ``[B, L]`` int64: tokens in ``[0, vocab)`` with ``mask_token_id`` at masked slots
    (rows all masked, none masked, seed + masks, or random; see :func:`masks`)."""
    b = draw(batch) if isinstance(batch, st.SearchStrategy) else batch
    n = draw(length) if isinstance(length, st.SearchStrategy) else length
    tokens = torch.tensor(draw(st.lists(st.integers(0, vocab - 1), min_size=b * n, max_size=b * n)),
                          dtype=torch.int64).reshape(b, n)
    tokens = torch.where(tokens == mask_token_id, (tokens + 1) % vocab, tokens)
    if vocab == 1:
        tokens.fill_(mask_token_id + 1)
    return torch.where(draw(masks(b, n)), torch.full_like(tokens, mask_token_id), tokens)


@st.composite
def confidences(draw: st.DrawFn, batch: int, length: int, allow_nan: bool = True,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Confidences ``[B, L]`` in ``[0, 1]`` with ties, exact 0 and 1 and (optionally) NaN."""
    pool = [0.0, 1.0, 0.5, 0.9] + ([math.nan] if allow_nan else [])
    value = st.one_of(st.sampled_from(pool), st.floats(0.0, 1.0, width=32))
    return torch.tensor(draw(st.lists(value, min_size=batch * length, max_size=batch * length)),
                        dtype=dtype).reshape(batch, length)


@st.composite
def drafts(draw: st.DrawFn, batch: int | st.SearchStrategy[int] = st.integers(1, 4),
           length: int | st.SearchStrategy[int] = st.integers(1, 10),
           vocab: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """A verified block and its AR tokens, ``([B, L], [B, L])`` int64, with every accepted
    length ``0..L-1`` reachable: ``ar[:, :k]`` copies ``block[:, 1:k+1]`` for a drawn ``k``,
    the rest is random (so longer accidental matches happen too)."""
    b = draw(batch) if isinstance(batch, st.SearchStrategy) else batch
    n = draw(length) if isinstance(length, st.SearchStrategy) else length
    tok = st.lists(st.integers(0, vocab - 1), min_size=b * n, max_size=b * n)
    block = torch.tensor(draw(tok), dtype=torch.int64).reshape(b, n)
    ar = torch.tensor(draw(tok), dtype=torch.int64).reshape(b, n)
    for row in range(b):
        k = draw(st.integers(0, n - 1))
        ar[row, :k] = block[row, 1:k + 1]
    return block, ar


@st.composite
def sampling_params(draw: st.DrawFn, batch: int, vocab: int, per_row: bool | None = None) -> dict[str, Any]:
    """Keyword arguments ``seed, temperature, top_k, top_p, noise_stream`` for the sample op,
    each a scalar or (when ``per_row``) a ``[B]`` tensor; includes greedy rows (T = 0), disabled
    and extreme filters (top_k 0, 1, V - 1, V; top_p 0, 1, tiny)."""
    per_row = draw(st.booleans()) if per_row is None else per_row
    temp = st.sampled_from([0.0, 0.5, 1.0, 2.0, 1e-3])
    top_k = st.one_of(st.sampled_from([0, 1, max(vocab - 1, 0), vocab]), st.integers(0, vocab + 1))
    top_p = st.one_of(st.sampled_from([1.0, 0.0, 0.5, 0.9, 1e-6]), st.floats(0.0, 1.0))
    seed = st.integers(0, 2**40)
    noise_stream = st.integers(0, 7)
    if not per_row:
        return {"seed": draw(seed), "temperature": draw(temp), "top_k": draw(top_k), "top_p": draw(top_p),
                "noise_stream": draw(noise_stream)}

    def row(s: st.SearchStrategy, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor([draw(s) for _ in range(batch)], dtype=dtype)

    return {"seed": row(seed, torch.int64), "temperature": row(temp, torch.float64),
            "top_k": row(top_k, torch.int64), "top_p": row(top_p, torch.float64),
            "noise_stream": row(noise_stream, torch.int64)}


# --------------------------------------------------------------------------------------------
# Checking a kernel against a reference
# --------------------------------------------------------------------------------------------
