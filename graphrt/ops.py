"""The built-in ops: primitives, fused decode ops and control ops.

Primitives are fine enough that users can write new decode rules from them;
every fused op is, by definition, equal to a chain of primitives (its
reference below is that chain's meaning, shared with :mod:`graphrt.sampling`);
control ops (``forward``, ``commit``, ``emit``, ``loop``) are interpreted by
the executor. All references work per request (no batch dimension); scalars
are rank-0 tensors. Reductions act on the last dimension.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from graphrt import noise, sampling
from graphrt.registry import REQUIRED, OpDef, register_op
from graphrt.types import CACHE, CacheType, Dim, TensorType, Type, merge_dims, shapes_compatible

ATTENTION = ("causal", "bidirectional", "mask")
WRITE = ("all", "none", "mask")
ADAPTER = ("none", "all", "mask")
LOGITS = ("all", "last")


# ----------------------------------------------------------------------------- type rules

def _tensor(t: Type, what: str) -> TensorType:
    if not isinstance(t, TensorType):
        raise ValueError(f"{what}: expected a tensor, found {t}")
    return t


def _dtype(t: Type, allowed: tuple[str, ...], what: str) -> TensorType:
    t = _tensor(t, what)
    if t.dtype not in allowed:
        raise ValueError(f"{what}: expected dtype {'/'.join(allowed)}, found {t}")
    return t


def _scalar(t: Type, allowed: tuple[str, ...], what: str) -> TensorType:
    t = _dtype(t, allowed, what)
    if t.shape:
        raise ValueError(f"{what}: expected a scalar {'/'.join(allowed)}, found {t}")
    return t


def _rank_at_least(t: TensorType, n: int, what: str) -> TensorType:
    if t.rank < n:
        raise ValueError(f"{what}: expected rank >= {n}, found {t}")
    return t


def _broadcast(a: TensorType, b: TensorType, what: str) -> tuple[Dim, ...]:
    if not a.shape:
        return b.shape
    if not b.shape:
        return a.shape
    if not shapes_compatible(a.shape, b.shape):
        raise ValueError(f"{what}: shapes must match or one be a scalar, found {a} and {b}")
    return tuple(merge_dims(x, y) for x, y in zip(a.shape, b.shape))


def _binary(out_dtype: str | None, allowed: tuple[str, ...]) -> Callable[[list[Type], dict], list[Type]]:
    def infer(ts: list[Type], attrs: dict) -> list[Type]:
        a, b = _dtype(ts[0], allowed, "lhs"), _dtype(ts[1], allowed, "rhs")
        if a.dtype != b.dtype:
            raise ValueError(f"operands: expected equal dtypes, found {a} and {b}")
        return [TensorType(out_dtype or a.dtype, _broadcast(a, b, "operands"))]

    return infer


def _unary(allowed: tuple[str, ...], out_dtype: str | None = None) -> Callable[[list[Type], dict], list[Type]]:
    def infer(ts: list[Type], attrs: dict) -> list[Type]:
        a = _dtype(ts[0], allowed, "input")
        return [TensorType(out_dtype or a.dtype, a.shape)]

    return infer


def _reduce(allowed: tuple[str, ...], out_dtype: str | None) -> Callable[[list[Type], dict], list[Type]]:
    def infer(ts: list[Type], attrs: dict) -> list[Type]:
        a = _rank_at_least(_dtype(ts[0], allowed, "input"), 1, "input")
        return [TensorType(out_dtype or a.dtype, a.shape[:-1])]

    return infer


def _prim(name: str, inputs: tuple[str, ...], infer, reference, attrs: dict | None = None, doc: str = "",
          effects: frozenset[str] = frozenset(), tier: str = "primitive", optional: tuple[str, ...] = ()) -> None:
    register_op(OpDef(name, inputs, dict(attrs or {}), infer, reference, effects, tier, doc, optional_inputs=optional))


# ----------------------------------------------------------------------------- primitives

NUM = ("i64", "float")
ANY = ("i64", "float", "bool")

for _name, _fn in {"add": torch.add, "sub": torch.sub, "mul": torch.mul,
                   "maximum": torch.maximum, "minimum": torch.minimum}.items():
    _prim(_name, ("lhs", "rhs"), _binary(None, NUM), _fn, doc=f"Elementwise {_name} with scalar broadcasting.")
_prim("div", ("lhs", "rhs"), _binary(None, ("float",)), torch.div, doc="Elementwise true division of floats.")
for _name, _fn in {"eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le,
                   "gt": torch.gt, "ge": torch.ge}.items():
    _prim(_name, ("lhs", "rhs"), _binary("bool", ANY), _fn, doc=f"Elementwise comparison '{_name}' -> bool.")
_prim("and", ("lhs", "rhs"), _binary("bool", ("bool",)), torch.logical_and, doc="Elementwise logical and.")
_prim("or", ("lhs", "rhs"), _binary("bool", ("bool",)), torch.logical_or, doc="Elementwise logical or.")
_prim("not", ("x",), _unary(("bool",)), torch.logical_not, doc="Elementwise logical not.")
_prim("neg", ("x",), _unary(NUM), torch.neg, doc="Elementwise negation.")

_TORCH_DTYPE = {"i64": torch.int64, "bool": torch.bool, "float": torch.float64}


def _cast_infer(ts: list[Type], attrs: dict) -> list[Type]:
    a = _tensor(ts[0], "input")
    if not isinstance(attrs["dtype"], str) or attrs["dtype"] not in _TORCH_DTYPE:
        raise ValueError(f"attribute dtype: expected one of {sorted(_TORCH_DTYPE)}, found {attrs['dtype']!r}")
    return [TensorType(attrs["dtype"], a.shape)]


def _cast_ref(x: torch.Tensor, dtype: str) -> torch.Tensor:
    if dtype == "float":
        return x if x.is_floating_point() else x.to(torch.float64)
    return x.to(_TORCH_DTYPE[dtype])


_prim("cast", ("x",), _cast_infer, _cast_ref, {"dtype": REQUIRED},
      doc="Convert dtype (to 'float' keeps an existing float precision, ints become float64).")


def _where_infer(ts: list[Type], attrs: dict) -> list[Type]:
    c = _dtype(ts[0], ("bool",), "cond")
    a, b = _tensor(ts[1], "if_true"), _tensor(ts[2], "if_false")
    if a.dtype != b.dtype:
        raise ValueError(f"branches: expected equal dtypes, found {a} and {b}")
    shape = _broadcast(c, TensorType(a.dtype, _broadcast(a, b, "branches")), "cond and branches")
    return [TensorType(a.dtype, shape)]


def _where_ref(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_floating_point() and b.is_floating_point() and a.dtype != b.dtype:
        a, b = a.to(torch.float64), b.to(torch.float64)
    return torch.where(c, a, b)


_prim("where", ("cond", "if_true", "if_false"), _where_infer, _where_ref, doc="Elementwise select.")
_prim("argmax", ("x",), _reduce(NUM, "i64"), sampling.argmax_lowest,
      doc="Index of the maximum over the last dim; lowest index on ties; NaN counts as -inf; all -inf gives 0.")
_prim("max", ("x",), _reduce(NUM, None), lambda x: sampling.clean_logits(x).max(dim=-1).values
      if x.is_floating_point() else x.max(dim=-1).values, doc="Maximum over the last dim (NaN counts as -inf).")
_prim("clean", ("x",), _unary(("float",)), sampling.clean_logits, doc="float64 copy with NaN replaced by -inf.")
def _ban_ref(x: torch.Tensor, index: int) -> torch.Tensor:
    out = x.clone()
    out[..., index] = float("-inf")
    return out


_prim("ban", ("x",), _unary(("float",)), _ban_ref, {"index": REQUIRED},
      doc="Copy of x with x[..., index] = -inf (a token that must never be chosen, e.g. the mask token).")

_prim("softmax", ("x",), _unary(("float",)), lambda x: torch.softmax(x.to(torch.float64), -1).nan_to_num(0.0),
      doc="float64 softmax over the last dim; an all -inf row gives zeros.")
_prim("log_softmax", ("x",), _unary(("float",)), lambda x: torch.log_softmax(x.to(torch.float64), -1),
      doc="float64 log-softmax over the last dim.")


def _mask_infer(param_dtypes: tuple[str, ...]) -> Callable[[list[Type], dict], list[Type]]:
    def infer(ts: list[Type], attrs: dict) -> list[Type]:
        a = _rank_at_least(_dtype(ts[0], NUM, "x"), 1, "x")
        _scalar(ts[1], param_dtypes, "parameter")
        return [TensorType("bool", a.shape)]

    return infer


_prim("topk", ("x", "k"), _mask_infer(("i64",)), lambda x, k: sampling.top_k_mask(x, int(k)),
      doc="Bool mask of the k largest entries of the last dim (ties: lowest index); k <= 0 keeps all.")
_prim("top_p", ("x", "p"), _mask_infer(("float",)), lambda x, p: sampling.top_p_mask(x, float(p)),
      doc="Bool nucleus mask over softmax(x): smallest probability-sorted prefix reaching mass p.")


def _gather_infer(ts: list[Type], attrs: dict) -> list[Type]:
    x = _rank_at_least(_tensor(ts[0], "x"), 1, "x")
    idx = _dtype(ts[1], ("i64",), "index")
    if idx.rank not in (x.rank - 1, x.rank) or not shapes_compatible(idx.shape[: x.rank - 1], x.shape[:-1]):
        raise ValueError(f"index: expected shape {x.shape[:-1]} (or with a trailing dim) for x {x}, found {idx}")
    return [TensorType(x.dtype, idx.shape)]


def _gather_ref(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    if idx.dim() == x.dim():
        return x.gather(-1, idx)
    return x.gather(-1, idx.unsqueeze(-1)).squeeze(-1)


_prim("gather", ("x", "index"), _gather_infer, _gather_ref,
      doc="x[..., index[...]] along the last dim (index rank = x rank - 1, or equal rank for several picks).")


def _scatter_infer(ts: list[Type], attrs: dict) -> list[Type]:
    x = _rank_at_least(_tensor(ts[0], "x"), 1, "x")
    _scalar(ts[1], ("i64",), "index")
    v = _scalar(ts[2], (x.dtype,), "value")
    del v
    return [x]


def _scatter_ref(x: torch.Tensor, idx: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    out[..., int(idx)] = value
    return out


_prim("scatter", ("x", "index", "value"), _scatter_infer, _scatter_ref, doc="Copy of x with x[..., index] = value.")
_prim("cumsum", ("x",), _unary(NUM), lambda x: torch.cumsum(x, -1), doc="Inclusive prefix sum over the last dim.")
_prim("cumprod", ("x",), _unary(NUM), lambda x: torch.cumprod(x, -1), doc="Inclusive prefix product over the last dim.")
_prim("sum", ("x",), _reduce(NUM, None), lambda x: x.sum(-1), doc="Sum over the last dim.")
_prim("any", ("x",), _reduce(("bool",), "bool"), lambda x: x.any(-1), doc="Logical or over the last dim.")
_prim("all", ("x",), _reduce(("bool",), "bool"), lambda x: x.all(-1), doc="Logical and over the last dim.")


def _py_value(value: Any, dtype: str) -> Any:
    return {"i64": int, "bool": bool, "float": float}[dtype](value)


def _fill_infer(ts: list[Type], attrs: dict) -> list[Type]:
    n, dtype = attrs["length"], attrs["dtype"]
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"attribute length: expected an int >= 0, found {n!r}")
    if dtype not in _TORCH_DTYPE:
        raise ValueError(f"attribute dtype: expected one of {sorted(_TORCH_DTYPE)}, found {dtype!r}")
    return [TensorType(dtype, (n,))]


_prim("fill", (), _fill_infer,
      lambda length, value, dtype: torch.full((length,), _py_value(value, dtype), dtype=_TORCH_DTYPE[dtype]),
      {"length": REQUIRED, "value": REQUIRED, "dtype": "i64"}, doc="A [length] tensor filled with value.")


def _constant_infer(ts: list[Type], attrs: dict) -> list[Type]:
    if not isinstance(attrs["dtype"], str) or attrs["dtype"] not in _TORCH_DTYPE:
        raise ValueError(f"attribute dtype: expected one of {sorted(_TORCH_DTYPE)}, found {attrs['dtype']!r}")
    return [TensorType(attrs["dtype"], ())]


_prim("constant", (), _constant_infer,
      lambda value, dtype: torch.tensor(_py_value(value, dtype), dtype=_TORCH_DTYPE[dtype]),
      {"value": REQUIRED, "dtype": "i64"}, doc="A scalar constant.")


def _arange_infer(ts: list[Type], attrs: dict) -> list[Type]:
    _scalar(ts[0], ("i64",), "start")
    n = attrs["length"]
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"attribute length: expected an int >= 0, found {n!r}")
    return [TensorType("i64", (n,))]


_prim("arange", ("start",), _arange_infer,
      lambda start, length: torch.arange(length, dtype=torch.int64, device=start.device) + start,
      {"length": REQUIRED}, doc="[start, start + length) as i64.")


def _positions_infer(ts: list[Type], attrs: dict) -> list[Type]:
    x = _rank_at_least(_tensor(ts[0], "like"), 1, "like")
    _scalar(ts[1], ("i64",), "start")
    return [TensorType("i64", x.shape[:1])]


_prim("arange_like", ("like", "start"), _positions_infer,
      lambda like, start: torch.arange(like.shape[0], dtype=torch.int64, device=like.device) + start,
      doc="[start, start + len(like)) as i64, for dynamic lengths (e.g. the prompt's positions).")


def _size_infer(ts: list[Type], attrs: dict) -> list[Type]:
    _rank_at_least(_tensor(ts[0], "x"), 1, "x")
    return [TensorType("i64", ())]


_prim("size", ("x",), _size_infer, lambda x: torch.tensor(x.shape[0], dtype=torch.int64, device=x.device),
      doc="Length of the first dim as an i64 scalar.")


def _slice_bounds(n: Dim, start: int, stop: int | None) -> Dim:
    if isinstance(n, int):
        return len(range(n)[slice(start, stop)])
    if stop is not None and start >= 0 and stop >= 0:
        return max(stop - start, 0)
    if stop is None and start < 0:
        return -start
    return "?"


def _slice_infer(ts: list[Type], attrs: dict) -> list[Type]:
    x = _rank_at_least(_tensor(ts[0], "x"), 1, "x")
    start, stop = attrs["start"], attrs["stop"]
    if not isinstance(start, int) or not (stop is None or isinstance(stop, int)):
        raise ValueError(f"attributes start/stop: expected ints (stop may be None), found {start!r}/{stop!r}")
    n = _slice_bounds(x.shape[0], start, stop)
    if attrs["squeeze"]:
        if n not in (1, "?"):
            raise ValueError(f"squeeze: expected a slice of length 1, found length {n}")
        return [TensorType(x.dtype, x.shape[1:])]
    return [TensorType(x.dtype, (n,) + x.shape[1:])]


def _slice_ref(x: torch.Tensor, start: int, stop: int | None, squeeze: bool) -> torch.Tensor:
    if squeeze:  # x[start:stop][0], as one select
        first, end, _ = slice(start, stop).indices(x.shape[0])
        if max(end - first, 0) != 1:
            raise ValueError(f"slice: squeeze expected length 1, found {max(end - first, 0)} "
                             f"(x of length {x.shape[0]})")
        return x.select(0, first)
    return x[start:stop]


_prim("slice", ("x",), _slice_infer, _slice_ref, {"start": 0, "stop": None, "squeeze": False},
      doc="x[start:stop] along the first dim (Python semantics, static bounds); squeeze drops it if length 1.")


def _dynamic_slice_infer(ts: list[Type], attrs: dict) -> list[Type]:
    x = _rank_at_least(_tensor(ts[0], "x"), 1, "x")
    _scalar(ts[1], ("i64",), "start")
    return [TensorType(x.dtype, (attrs["length"],) + x.shape[1:])]


def _dynamic_slice_ref(x: torch.Tensor, start: torch.Tensor, length: int) -> torch.Tensor:
    s = int(start)
    if s < 0 or s + length > x.shape[0]:
        raise ValueError(f"dynamic_slice: window [{s}, {s + length}) outside a first dim of {x.shape[0]}")
    return x[s:s + length]


_prim("dynamic_slice", ("x", "start"), _dynamic_slice_infer, _dynamic_slice_ref, {"length": REQUIRED},
      doc="x[start:start+length] along the first dim with a run-time start.")


def _dynamic_update_slice_infer(ts: list[Type], attrs: dict) -> list[Type]:
    x = _rank_at_least(_tensor(ts[0], "x"), 1, "x")
    _scalar(ts[1], ("i64",), "start")
    u = _rank_at_least(_tensor(ts[2], "update"), 1, "update")
    if u.dtype != x.dtype or not shapes_compatible(u.shape[1:], x.shape[1:]):
        raise ValueError(f"update: expected {x.dtype} with trailing shape {x.shape[1:]}, found {u}")
    return [x]


def _dynamic_update_slice_ref(x: torch.Tensor, start: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    out[start + torch.arange(update.shape[0], device=x.device)] = update  # indexes on the device: no host read
    return out


_prim("dynamic_update_slice", ("x", "start", "update"), _dynamic_update_slice_infer, _dynamic_update_slice_ref,
      doc="Copy of x with x[start:start+len(update)] = update along the first dim (run-time start; "
          "a window outside x is an indexing error).")


def _concat_infer(ts: list[Type], attrs: dict) -> list[Type]:
    if not ts:
        raise ValueError("expected at least one input to concatenate, found none")
    xs = [_rank_at_least(_tensor(t, f"input {i}"), 1, f"input {i}") for i, t in enumerate(ts)]
    dtype = xs[0].dtype
    total: Dim = 0
    for i, x in enumerate(xs):
        if x.dtype != dtype or not shapes_compatible(x.shape[1:], xs[0].shape[1:]):
            raise ValueError(f"input {i}: expected {dtype} with trailing shape {xs[0].shape[1:]}, found {x}")
        total = total + x.shape[0] if isinstance(total, int) and isinstance(x.shape[0], int) else "?"
    return [TensorType(dtype, (total,) + xs[0].shape[1:])]


def _concat_ref(*xs: torch.Tensor) -> torch.Tensor:
    if all(x.is_floating_point() for x in xs) and len({x.dtype for x in xs}) > 1:
        xs = tuple(x.to(torch.float64) for x in xs)
    return torch.cat(xs, 0)


_prim("concat", ("*xs",), _concat_infer, _concat_ref, doc="Concatenate along the first dim.")
_prim("unsqueeze", ("x",), lambda ts, a: [TensorType(_tensor(ts[0], "x").dtype, (1,) + _tensor(ts[0], "x").shape)],
      lambda x: x.unsqueeze(0), doc="Add a leading dim of length 1 (a scalar becomes a [1] tensor).")


def _noise_infer(ts: list[Type], attrs: dict) -> list[Type]:
    _scalar(ts[0], ("i64",), "seed")
    _scalar(ts[1], ("i64",), "stream")
    pos = _dtype(ts[2], ("i64",), "positions")
    like = _rank_at_least(_dtype(ts[3], ("float",), "like"), 1, "like")
    if not shapes_compatible(pos.shape, like.shape[:-1]):
        raise ValueError(f"positions: expected shape {like.shape[:-1]} to match like {like}, found {pos}")
    return [TensorType("float", like.shape)]


_prim("noise", ("seed", "stream", "positions", "like"), _noise_infer,
      lambda seed, stream, positions, like, purpose: noise.gumbel(int(seed), int(stream), positions, purpose,
                                                                  like.shape[-1]),
      {"purpose": noise.SAMPLE}, effects=frozenset({"noise"}),
      doc="Counter-based standard Gumbel noise [..., V] (float64) keyed by (seed, stream, position, purpose, index).")


def _take_infer(ts: list[Type], attrs: dict) -> list[Type]:
    x = _rank_at_least(_tensor(ts[0], "x"), 1, "x")
    idx = _dtype(ts[1], ("i64",), "index")
    if idx.rank > 1:
        raise ValueError(f"index: expected a scalar or a rank-1 i64 tensor, found {idx}")
    return [TensorType(x.dtype, idx.shape + x.shape[1:])]


def _take_ref(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    if index.dim() == 0:
        return x[int(index)]
    return x.index_select(0, index)


_prim("take", ("x", "index"), _take_infer, _take_ref,
      doc="x[index] along the first dim (rows of a [N, ...] tensor; a scalar index drops the dim).")


def _spec_layout_infer(ts: list[Type], attrs: dict) -> list[Type]:
    b = attrs["length"]
    if not isinstance(b, int) or b <= 0:
        raise ValueError(f"attribute length: expected an int > 0, found {b!r}")
    n = b * (b + 1)
    return [TensorType("bool", (n, n)), TensorType("bool", (n,)), TensorType("i64", (n,)), TensorType("i64", (n,))]


def spec_layout(length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Layout of one quadratic self-speculation forward over ``b (b + 1)`` tokens.

    Row ``i`` is ``[d_i, MASK x b]``. Returns ``(mask [N, N], chain [N], row [N], col [N])``:
    ``chain`` marks the ``d_i`` slots, ``row``/``col`` give each slot's row and
    offset within it. ``d_i`` attends to ``d_0..d_i``; row ``i``'s masks attend
    to ``d_0..d_i`` and to each other.
    """
    b = length
    row = torch.arange(b).repeat_interleave(b + 1)  # [N]
    col = torch.arange(b + 1).repeat(b)  # [N]
    chain = col == 0
    sees_chain = chain[None, :] & (row[None, :] <= row[:, None])  # key is d_j with j <= own row
    same_row_masks = (~chain[:, None]) & (~chain[None, :]) & (row[:, None] == row[None, :])
    return sees_chain | same_row_masks, chain, row, col


_prim("spec_layout", (), _spec_layout_infer, spec_layout, {"length": REQUIRED},
      doc="Static layout (mask, chain, row, col) of a quadratic self-speculation forward; see spec_layout().")


def _draft_layout_infer(ts: list[Type], attrs: dict) -> list[Type]:
    _rank_at_least(_tensor(ts[0], "prompt"), 1, "prompt")
    if not isinstance(attrs["length"], int) or attrs["length"] <= 0:
        raise ValueError(f"attribute length: expected an int > 0, found {attrs['length']!r}")
    return [TensorType("bool", ("?", "?")), TensorType("bool", ("?",)), TensorType("bool", ("?",))]


def draft_layout(prompt: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Layout of the first quadratic forward over ``prompt + MASK x length``.

    Returns ``(mask [P+b, P+b], is_prompt [P+b], is_mask [P+b])``: prompt queries
    are causal; mask queries see the prompt and every mask.
    """
    p, n = prompt.shape[0], prompt.shape[0] + length
    mask = torch.ones(n, n, dtype=torch.bool, device=prompt.device).tril()
    mask[p:, p:] = True
    is_prompt = torch.arange(n, device=prompt.device) < p
    return mask, is_prompt, ~is_prompt


_prim("draft_layout", ("prompt",), _draft_layout_infer, draft_layout, {"length": REQUIRED},
      doc="Layout (mask, is_prompt, is_mask) of prefill + first draft in one forward; see draft_layout().")


# ----------------------------------------------------------------------------- fused ops

def _logits_and_rows(logits_t: Type, rows_t: Type, rows: str) -> tuple[TensorType, TensorType]:
    """``logits float[..., V]`` and an ``i64[...]`` input with one entry per row of them."""
    logits = _rank_at_least(_dtype(logits_t, ("float",), "logits"), 1, "logits")
    per_row = _dtype(rows_t, ("i64",), rows)
    if not shapes_compatible(per_row.shape, logits.shape[:-1]):
        raise ValueError(f"{rows}: expected shape {logits.shape[:-1]}, found {per_row}")
    return logits, per_row


def _sample_infer(ts: list[Type], attrs: dict) -> list[Type]:
    logits, _ = _logits_and_rows(ts[0], ts[1], "positions")
    _scalar(ts[2], ("i64",), "seed")
    _scalar(ts[3], ("i64",), "stream")
    _scalar(ts[4], ("float",), "temperature")
    _scalar(ts[5], ("i64",), "top_k")
    _scalar(ts[6], ("float",), "top_p")
    return [TensorType("i64", logits.shape[:-1])]


_prim("sample", ("logits", "positions", "seed", "stream", "temperature", "top_k", "top_p"), _sample_infer,
      sampling.sample, {"purpose": noise.SAMPLE}, effects=frozenset({"noise"}), tier="fused",
      doc="Greedy at T = 0, else Gumbel-max over temperature/top-k/top-p filtered logits (sampling.sample).")


def _confidence_infer(ts: list[Type], attrs: dict) -> list[Type]:
    _, tok = _logits_and_rows(ts[0], ts[1], "tokens")
    return [TensorType("float", tok.shape)]


_prim("confidence", ("logits", "tokens"), _confidence_infer, sampling.confidence, tier="fused",
      doc="Softmax probability (temperature 1, no noise) of tokens = gather(softmax(clean(logits)), tokens).")


def _denoise_infer(ts: list[Type], attrs: dict) -> list[Type]:
    block = _rank_at_least(_dtype(ts[0], ("i64",), "block"), 1, "block")
    cand = _dtype(ts[1], ("i64",), "candidates")
    conf = _dtype(ts[2], ("float",), "confidence")
    for name, t in (("candidates", cand), ("confidence", conf)):
        if not shapes_compatible(t.shape, block.shape):
            raise ValueError(f"{name}: expected shape {block.shape}, found {t}")
    if attrs["threshold"] is None:
        if len(ts) != 4:
            raise ValueError("threshold=None needs a 4th input 'count' (slots to commit this step)")
        _scalar(ts[3], ("i64",), "count")
    elif len(ts) != 3:
        raise ValueError(f"with a threshold, expected 3 inputs, found {len(ts)}")
    return [block]


_prim("denoise_select", ("block", "candidates", "confidence", "count"), _denoise_infer, sampling.denoise_select,
      {"mask_token_id": REQUIRED, "threshold": REQUIRED}, tier="fused", optional=("count",),
      doc="Commit candidates into masked slots: most confident + all >= threshold, or the count most confident.")


def _verify_infer(ts: list[Type], attrs: dict) -> list[Type]:
    block = _rank_at_least(_dtype(ts[0], ("i64",), "block"), 1, "block")
    ar = _dtype(ts[1], ("i64",), "ar_tokens")
    if not shapes_compatible(block.shape, ar.shape):
        raise ValueError(f"ar_tokens: expected shape {block.shape}, found {ar}")
    return [TensorType("i64", ())]


_prim("verify_accept", ("block", "ar_tokens"), _verify_infer, sampling.verify_accept, tier="fused",
      doc="Accepted drafts k: longest run with ar_tokens[i] == block[i+1]; emit ar_tokens[:k+1].")


# ----------------------------------------------------------------------------- control ops

def _forward_infer(ts: list[Type], attrs: dict) -> list[Type]:
    if not isinstance(ts[0], CacheType):
        raise ValueError(f"input 0 (cache): expected cache, found {ts[0]}")
    tokens = _dtype(ts[1], ("i64",), "tokens")
    if tokens.rank != 1:
        raise ValueError(f"tokens: expected a rank-1 i64 tensor [L], found {tokens}")
    positions = _dtype(ts[2], ("i64",), "positions")
    if not shapes_compatible(positions.shape, tokens.shape):
        raise ValueError(f"positions: expected shape {tokens.shape}, found {positions}")
    for key, allowed in (("attention", ATTENTION), ("write", WRITE), ("adapter", ADAPTER), ("logits", LOGITS)):
        if attrs[key] not in allowed:
            raise ValueError(f"attribute {key}: expected one of {allowed}, found {attrs[key]!r}")
    extra = forward_extra_inputs(attrs)
    if len(ts) != 3 + len(extra):
        raise ValueError(f"expected inputs (cache, tokens, positions{''.join(', ' + e for e in extra)}) "
                         f"for {attrs}, found {len(ts)} inputs")
    n = tokens.shape[0]
    for name, t in zip(extra, ts[3:]):
        want = (n, n) if name == "mask" else (n,)
        t = _dtype(t, ("bool",), name)
        if not shapes_compatible(t.shape, want):
            raise ValueError(f"{name}: expected bool{list(want)}, found {t}")
    out: list[Type] = [TensorType("float", (1 if attrs["logits"] == "last" else n, "V"))]
    if attrs["write"] != "none":
        out.append(CACHE)
    return out


def forward_extra_inputs(attrs: dict[str, Any]) -> list[str]:
    """Names of the optional inputs a ``forward`` with these attributes takes, in order."""
    extra = []
    if attrs.get("attention") == "mask":
        extra.append("mask")
    if attrs.get("write") == "mask":
        extra.append("kv_write")
    if attrs.get("adapter") == "mask":
        extra.append("adapter")
    return extra


register_op(OpDef(
    "forward", ("cache", "tokens", "positions", "*extra"),
    {"attention": "causal", "write": "all", "adapter": "none", "logits": "all"}, _forward_infer, None,
    frozenset({"reads_cache", "writes_cache", "host_sync"}), "control",
    "Backbone call: logits [L, V] for tokens at absolute positions; attends to the cached prefix plus the "
    "attention pattern among these tokens. write=all/mask stores K/V (and yields the new cache); "
    "write=none is read-only. Extra inputs by attribute: mask [L, L] (attention=mask), kv_write [L] "
    "(write=mask), adapter [L] (adapter=mask). logits=last returns only the last token's logits [1, V] "
    "(a prefill that samples from its last position: the output head runs on one token, not L).",
))


def _commit_infer(ts: list[Type], attrs: dict) -> list[Type]:
    if not isinstance(ts[0], CacheType):
        raise ValueError(f"input 0 (cache): expected cache, found {ts[0]}")
    _scalar(ts[1], ("i64",), "length")
    return [CACHE]


register_op(OpDef("commit", ("cache", "length"), {}, _commit_infer, None,
                  frozenset({"reads_cache", "writes_cache"}), "control",
                  "Set the cache length: positions >= length are forgotten (rejected drafts)."))


def _emit_infer(ts: list[Type], attrs: dict) -> list[Type]:
    tok = _dtype(ts[0], ("i64",), "tokens")
    if tok.rank != 1:
        raise ValueError(f"tokens: expected a rank-1 i64 tensor, found {tok}")
    if len(ts) > 1:
        _scalar(ts[1], ("i64",), "count")
    if len(ts) > 2:
        lp = _dtype(ts[2], ("float",), "logprobs")
        if not shapes_compatible(lp.shape, tok.shape):
            raise ValueError(f"logprobs: expected shape {tok.shape}, found {lp}")
    if len(ts) > 3:
        info = _dtype(ts[3], ("i64",), "info")
        if info.rank != 1:
            raise ValueError(f"info: expected a rank-1 i64 tensor, found {info}")
    return [TensorType("bool", ())]


register_op(OpDef("emit", ("tokens", "count", "logprobs", "info"), {}, _emit_infer, None,
                  frozenset({"emits", "host_sync"}), "control",
                  "Hand tokens[:count] (all without count) and their log-probs to the caller; returns whether the "
                  "request is finished (budget or stop reached). info [k] (optional): what the policy decided for "
                  "these tokens (adaptive policies: source, width, accepted), recorded with the emission.",
                  optional_inputs=("count", "logprobs", "info")))


def _loop_infer(ts: list[Type], attrs: dict) -> list[Type]:
    _scalar(ts[0], ("bool",), "cond")
    return list(ts[1:])


register_op(OpDef("loop", ("cond", "*carried"), {}, _loop_infer, None, frozenset(), "control",
                  "while cond: (cond, *carried) = body(*carried); outputs the final carried values. The body "
                  "region takes the carried values and returns (cond, *next carried).", num_regions=1))


import graphrt.ngram  # noqa: E402,F401  (registers the context n-gram lookup)
from graphrt.out_variants import register_out_variants  # noqa: E402

register_out_variants()
