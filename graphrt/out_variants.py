"""Out-variants of op references: the same computation, written into a given buffer.

The executor uses these for values the memory plan gives a static buffer
(:mod:`graphrt.passes.memory_planning`), so a steady-state decode step writes
into preallocated memory instead of allocating. Each variant is bit for bit its
op's reference (the same torch kernel with ``out=``, or the reference's own
steps done in place) given an ``out`` of the reference's result dtype and
shape, which is what the executor passes (the buffer was created from the
reference's first result). Ops without a variant here are computed by the
reference and copied into the buffer.

>>> import torch
>>> out = torch.empty(3, dtype=torch.int64)
>>> OUT_VARIANTS["add"](torch.arange(3), torch.tensor(1), out=out)
tensor([1, 2, 3])
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from graphrt import sampling
from graphrt.registry import get_op, register_impls

F64 = torch.float64


def _where(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
    if a.is_floating_point() and b.is_floating_point() and a.dtype != b.dtype:
        a, b = a.to(F64), b.to(F64)
    return torch.where(c, a, b, out=out)


def _sum(x: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
    if x.is_floating_point():  # keep the reference's exact reduction order for floats
        return out.copy_(x.sum(-1))
    return torch.sum(x, -1, out=out)


def _gather(x: torch.Tensor, idx: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
    if idx.dim() == x.dim():
        return torch.gather(x, -1, idx, out=out)
    torch.gather(x, -1, idx.unsqueeze(-1), out=out.unsqueeze(-1))
    return out


def _softmax(x: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
    torch.softmax(x.to(F64), -1, out=out)
    return torch.nan_to_num(out, 0.0, out=out)


def _cast(x: torch.Tensor, dtype: str, *, out: torch.Tensor) -> torch.Tensor:
    del dtype  # the buffer has the reference's result dtype; copy_ converts exactly like .to()
    return out.copy_(x)


def _ban(x: torch.Tensor, index: int, *, out: torch.Tensor) -> torch.Tensor:
    out.copy_(x)
    out.select(-1, index).fill_(float("-inf"))  # out[..., index] = -inf, without Python indexing
    return out


def _scatter(x: torch.Tensor, idx: torch.Tensor, value: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
    out.copy_(x)
    out[..., int(idx)] = value
    return out


def _arange(start: torch.Tensor, length: int, *, out: torch.Tensor) -> torch.Tensor:
    torch.arange(length, out=out)
    return out.add_(start)


def _size(x: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
    return out.fill_(x.shape[0])


def _concat(*xs: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    if len({x.dtype for x in xs}) > 1:
        return out.copy_(torch.cat([x.to(F64) for x in xs], 0))
    return torch.cat(xs, 0, out=out)


def _sample(logits: torch.Tensor, positions: torch.Tensor, seed: torch.Tensor, stream: torch.Tensor,
            temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, purpose: int, *,
            out: torch.Tensor) -> torch.Tensor:
    if not float(temperature) > 0:  # greedy, as sampling.sample: the argmax goes straight into the buffer
        return sampling.argmax_lowest(logits, out=out)
    return out.copy_(sampling.sample(logits, positions, seed, stream, temperature, top_k, top_p, purpose=purpose))


# Registered on the ops' registry entries by :func:`register_out_variants`; look them up there.
OUT_VARIANTS: dict[str, Callable[..., Any]] = {
    # torch's own functions take ``out=`` (called with the op's inputs only: no extra argument reaches them)
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
    "maximum": torch.maximum, "minimum": torch.minimum,
    "eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge,
    "and": torch.logical_and, "or": torch.logical_or, "not": torch.logical_not, "neg": torch.neg,
    "where": _where,
    "cumsum": lambda x, *, out: torch.cumsum(x, -1, out=out),
    "cumprod": lambda x, *, out: torch.cumprod(x, -1, out=out),
    "sum": _sum,
    "any": lambda x, *, out: torch.any(x, -1, out=out),
    "all": lambda x, *, out: torch.all(x, -1, out=out),
    "gather": _gather,
    "softmax": _softmax,
    "log_softmax": lambda x, *, out: torch.log_softmax(x.to(F64), -1, out=out),
    "cast": _cast,
    "ban": _ban,
    "scatter": _scatter,
    "arange": _arange,
    "size": _size,
    "concat": _concat,
    "argmax": lambda x, *, out: sampling.argmax_lowest(x, out=out),
    "sample": _sample,
}
"""Op name -> ``variant(*inputs, out=buffer, **attrs)``."""


def register_out_variants() -> None:
    """Put the built-in ops' out-variants on their registry entries (called once, by :mod:`graphrt.ops`)."""
    for op, variant in OUT_VARIANTS.items():
        register_impls(op, out_variant=variant)


def out_variant(op: str) -> Callable[..., Any] | None:
    """The out-variant on ``op``'s registry entry, or None (compute, then copy).

    Parameters
    ----------
    op:
        A registered op name.

    Returns
    -------
    Callable or None
        ``variant(*inputs, out=buffer, **attrs) -> buffer``.
    """
    return get_op(op).out_variant
