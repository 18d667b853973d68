"""Property-based testing of decode kernels against their reference semantics.

Hypothesis strategies for the awkward inputs decode kernels meet (logits with
ties, extreme values and NaN/inf rows, vocabulary sizes that are not
multiples of the thread-block size, masked blocks, drafts with every accepted
length) and :func:`check_kernel`, which runs a kernel and a reference on the
same inputs and reports every mismatch clearly. Kernels run in Numba's CUDA
simulator on CPU (:func:`enable_simulator`, before numba is first imported)
or on a GPU when there is one. See ``docs/testing_kernels.md``.

This module imports hypothesis and torch only; numba is never imported here.

It also re-exports the tiny checkpoint writers of ``graphrt.frontends.fixtures``
(:func:`write_release_checkpoint`, the Nemotron-Labs-Diffusion release layout with
its drafter adapter; :func:`write_transformers_checkpoint`, Llama / Qwen2 / Qwen3
written by transformers; :func:`tiny_tokenizer`), imported on first use.

>>> from hypothesis import given
>>> @given(logits(batch=2, vocab=vocab_sizes(max_value=40)))
... def test_argmax(x):
...     check_kernel(argmax_kernel, argmax_reference, x)      # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

__all__ = [
    "KernelCheck",
    "as_kernel_array",
    "blocks",
    "check_kernel",
    "confidences",
    "drafts",
    "enable_simulator",
    "kernel_device",
    "kernel_settings",
    "kernel_threads",
    "logits",
    "masks",
    "sampling_params",
    "vocab_sizes",
    "tiny_tokenizer",
    "write_release_checkpoint",
    "write_transformers_checkpoint",
]

_FIXTURES = ("tiny_tokenizer", "write_release_checkpoint", "write_transformers_checkpoint")


def __getattr__(name: str) -> Any:
    """The checkpoint writers of ``graphrt.frontends.fixtures`` (the core imports no frontend eagerly)."""
    if name in _FIXTURES:
        import importlib

        return getattr(importlib.import_module("graphrt.frontends.fixtures"), name)
    raise AttributeError(f"module 'graphrt.testing' has no attribute {name!r}")

MASK_TOKEN_ID = 0
"""Default mask token id of :func:`blocks` (small, so collisions with candidates happen)."""


# --------------------------------------------------------------------------------------------
# Where kernels run
# --------------------------------------------------------------------------------------------
def enable_simulator() -> None:
    """Turn on Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).

    Must run before numba is first imported (e.g. at the top of a
    ``conftest.py``); raises ``RuntimeError`` if numba is already imported
    without the simulator.
    """
    numba = sys.modules.get("numba")
    if numba is not None:
        if not numba.config.ENABLE_CUDASIM:
            raise RuntimeError("enable_simulator: numba was imported before NUMBA_ENABLE_CUDASIM=1 was set; "
                               "set it before the first numba import (e.g. at the top of conftest.py)")
        return
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"


def as_kernel_array(t: torch.Tensor) -> Any:
    """What a raw Numba kernel should receive for tensor ``t``: a no-sync CUDA array view of a CUDA
    tensor, or a numpy view of a CPU tensor in the simulator (both share ``t``'s memory, so kernels
    write in place)."""
    from graphrt.cuda_kernels._launch import as_kernel_array as convert

    return convert(t, "gpu" if t.is_cuda else "sim")


def kernel_device() -> str:
    """``"sim"`` when the simulator is enabled, else ``"cuda"`` (kernels need one or the other)."""
    from graphrt.cuda_kernels._launch import simulator_enabled

    return "sim" if simulator_enabled() else "cuda"


def kernel_threads() -> st.SearchStrategy[int | None]:
    """Threads per block to test with: 1, 8 or 32 in the simulator (sizes that are not multiples
    of them come from :func:`vocab_sizes`); the launcher's default (``None``) on a GPU."""
    return st.sampled_from([1, 8, 32]) if kernel_device() == "sim" else st.just(None)


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
@dataclass
class Mismatch:
    """One output (or in-place input) that differs between kernel and reference."""

    name: str
    count: int
    total: int
    examples: list[tuple[tuple[int, ...], Any, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"  {self.name}: {self.count} of {self.total} entries differ"]
        for index, got, want in self.examples:
            lines.append(f"    at {index}: kernel {got!r}, reference {want!r}")
        return "\n".join(lines)


@dataclass
class KernelCheck:
    """Result of :func:`check_kernel`: the outputs of both sides and the mismatches."""

    device: str
    kernel_out: Any
    reference_out: Any
    mismatches: list[Mismatch]

    @property
    def ok(self) -> bool:
        """Whether every compared tensor agreed."""
        return not self.mismatches

    def report(self) -> str:
        """A readable summary of the mismatches (empty string when :attr:`ok`)."""
        if self.ok:
            return ""
        return f"kernel differs from reference on {self.device}:\n" + "\n".join(str(m) for m in self.mismatches)


def _flatten(out: Any, prefix: str) -> list[tuple[str, Any]]:
    if isinstance(out, torch.Tensor) or out is None:
        return [(prefix, out)]
    if isinstance(out, (tuple, list)):
        items: list[tuple[str, Any]] = []
        for i, o in enumerate(out):
            items.extend(_flatten(o, f"{prefix}[{i}]"))
        return items
    if isinstance(out, dict):
        items = []
        for k, o in out.items():
            items.extend(_flatten(o, f"{prefix}[{k!r}]"))
        return items
    return [(prefix, out)]


def _compare(name: str, got: Any, want: Any, rtol: float, atol: float, max_examples: int) -> Mismatch | None:
    if not isinstance(want, torch.Tensor):
        return None if got == want else Mismatch(name, 1, 1, [((), got, want)])
    if not isinstance(got, torch.Tensor):
        return Mismatch(name, 1, 1, [((), type(got).__name__, "Tensor")])
    got = got.detach().cpu()
    want = want.detach().cpu()
    if got.shape != want.shape:
        return Mismatch(name, 1, 1, [((), f"shape {tuple(got.shape)}", f"shape {tuple(want.shape)}")])
    if want.dtype.is_floating_point or got.dtype.is_floating_point:
        g, w = got.to(torch.float64), want.to(torch.float64)
        same = torch.isclose(g, w, rtol=rtol, atol=atol, equal_nan=True) | (g == w)
    else:
        same = got == want
    bad = (~same).nonzero()
    if bad.numel() == 0:
        return None
    examples = [(tuple(int(i) for i in idx), got[tuple(idx)].item(), want[tuple(idx)].item())
                for idx in bad[:max_examples]]
    return Mismatch(name, int(bad.shape[0]), want.numel(), examples)


def _to(value: Any, device: str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone().to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def check_kernel(
    kernel_fn: Callable[..., Any],
    reference_fn: Callable[..., Any],
    *args: Any,
    device: str | None = None,
    rtol: float | dict[str, float] = 0.0,
    atol: float | dict[str, float] = 0.0,
    check_inputs: bool = True,
    raise_on_mismatch: bool = True,
    max_examples: int = 5,
    **kwargs: Any,
) -> KernelCheck:
    """Run ``kernel_fn`` and ``reference_fn`` on copies of the same inputs and compare.

    The reference runs on CPU copies; the kernel on ``device`` copies
    (``"sim"``: CPU tensors in Numba's CUDA simulator; ``"cuda"``: GPU
    tensors). Compared: every tensor the two return (tuples, lists and dicts
    are walked) and, with ``check_inputs``, every tensor argument afterwards
    (kernels that work in place must leave the same values).

    Parameters
    ----------
    kernel_fn, reference_fn:
        Callables with the same signature; ``args``/``kwargs`` go to both.
    device:
        ``"sim"``, ``"cuda"`` or ``None`` (:func:`kernel_device`).
    rtol, atol:
        Tolerances for float outputs (0: bitwise, NaN equal to NaN); a dict
        maps output names as reported (``"out[1]"``, ``"arg[0]"``) to tolerances.
    check_inputs:
        Also compare tensor arguments after the call (in-place results).
    raise_on_mismatch:
        Raise ``AssertionError`` with :meth:`KernelCheck.report` on a mismatch.
    max_examples:
        Differing entries listed per output.

    Returns
    -------
    KernelCheck
        Both outputs and the list of mismatches.
    """
    device = device or kernel_device()
    if device == "sim":
        enable_simulator()
        run_on = "cpu"
    elif device == "cuda":
        from graphrt.cuda_kernels.streams import require_cuda

        require_cuda("check_kernel(device='cuda')")
        run_on = "cuda"
    else:
        raise ValueError(f"check_kernel: expected device 'sim' or 'cuda', found {device!r}")
    ref_args, ref_kwargs = _to(list(args), "cpu"), _to(kwargs, "cpu")
    ker_args, ker_kwargs = _to(list(args), run_on), _to(kwargs, run_on)
    reference_out = reference_fn(*ref_args, **ref_kwargs)
    kernel_out = kernel_fn(*ker_args, **ker_kwargs)
    if run_on == "cuda":
        torch.cuda.synchronize()
    pairs = list(zip(_flatten(kernel_out, "out"), _flatten(reference_out, "out")))
    if check_inputs:
        pairs += [((f"arg[{i}]", k), (f"arg[{i}]", r)) for i, (k, r) in enumerate(zip(ker_args, ref_args))
                  if isinstance(r, torch.Tensor)]
        pairs += [((f"arg[{n!r}]", ker_kwargs[n]), (f"arg[{n!r}]", r)) for n, r in ref_kwargs.items()
                  if isinstance(r, torch.Tensor)]
    mismatches = []
    for (name, got), (_, want) in pairs:
        r = rtol.get(name, 0.0) if isinstance(rtol, dict) else rtol
        a = atol.get(name, 0.0) if isinstance(atol, dict) else atol
        m = _compare(name, got, want, r, a, max_examples)
        if m is not None:
            mismatches.append(m)
    result = KernelCheck(device, kernel_out, reference_out, mismatches)
    if raise_on_mismatch and not result.ok:
        raise AssertionError(result.report() + "\n" + _describe_inputs(args, kwargs))
    return result


def _describe_inputs(args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        if isinstance(v, torch.Tensor):
            text = repr(v) if v.numel() <= 64 else f"tensor(shape={tuple(v.shape)}, dtype={v.dtype})"
            return text.replace("\n", "\n      ")
        return repr(v)

    lines = ["inputs:"] + [f"  arg[{i}] = {show(a)}" for i, a in enumerate(args)]
    lines += [f"  {k} = {show(v)}" for k, v in kwargs.items()]
    return "\n".join(lines)
