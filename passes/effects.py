"""What passes may do with a node: the effect and totality classification.

* **side effects** (``writes_cache``, ``host_sync``, ``emits``, and ``reads_cache``
  for ordering): such nodes are never removed, merged or reordered past each
  other; a loop whose body holds one counts as one.
* **pure** nodes (everything else outside the control tier, ``noise`` included:
  counter-based noise is a pure function of its inputs) may be merged (CSE),
  removed when unused (DCE) and evaluated at compile time.
* **total** ops cannot raise on well-typed inputs, so they may also run
  speculatively (hoisted out of a loop that might not iterate, or moved across
  an ``emit`` that might end the program). Ops that index with run-time values
  (``gather``, ``scatter``, ``dynamic_slice``, ``slice`` with squeeze, ``ban``)
  are pure but not total.
"""

from __future__ import annotations

from graphrt.ir import Node
from graphrt.registry import get_op

SIDE_EFFECTS = frozenset({"writes_cache", "host_sync", "emits"})
ORDERED_EFFECTS = frozenset({"reads_cache", "writes_cache", "host_sync", "emits"})

TOTAL_OPS = frozenset({
    "add", "sub", "mul", "div", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not",
    "neg", "cast", "where", "argmax", "max", "clean", "softmax", "log_softmax", "topk", "top_p", "cumsum",
    "cumprod", "sum", "any", "all", "fill", "constant", "arange", "arange_like", "size", "concat", "unsqueeze",
    "noise", "sample", "denoise_select", "verify_accept",
})
"""Ops whose reference cannot raise on inputs of the types the verifier accepts."""

COMMUTATIVE = frozenset({"add", "mul", "maximum", "minimum", "eq", "ne", "and", "or"})
"""Binary ops whose operands may be swapped without changing a single bit of the result."""

FLIPPED = {"lt": "gt", "gt": "lt", "le": "ge", "ge": "le"}
"""Comparisons and their mirror images: ``lt(a, b) == gt(b, a)`` exactly (NaN included)."""

VIEW_OPS = frozenset({"slice", "dynamic_slice", "unsqueeze"})
"""Ops whose reference returns a view of an input (no new storage)."""

HOST_READS: dict[str, tuple[int, ...]] = {
    "noise": (0, 1),
    "topk": (1,),
    "top_p": (1,),
    "scatter": (1,),
    "dynamic_slice": (1,),
}
"""Inputs whose value a primitive's reference reads on the host (``int(k)``, ``float(p)``).

The fused ops' kernels (``sample``, ``denoise_select``, ...) take their scalars
as device tensors (``graphrt.cuda_kernels.op_adapters``), so they read nothing
on the host."""


def _region_effects(node: Node, wanted: frozenset[str]) -> bool:
    for region in node.regions:
        for inner in region.walk():
            if get_op(inner.op).effects & wanted:
                return True
    return False


def has_side_effects(node: Node) -> bool:
    """Whether ``node`` (of a verified graph), or anything in its regions, writes the cache, syncs or emits."""
    return bool(get_op(node.op).effects & SIDE_EFFECTS) or _region_effects(node, SIDE_EFFECTS)


def is_ordered(node: Node) -> bool:
    """Whether ``node`` must keep its place among the other ordered nodes (any cache/host/emit effect)."""
    return bool(get_op(node.op).effects & ORDERED_EFFECTS) or _region_effects(node, ORDERED_EFFECTS)


def is_pure(node: Node) -> bool:
    """Whether ``node`` is a pure function of its inputs and attributes (no control op, no effects)."""
    opdef = get_op(node.op)
    return opdef.tier != "control" and not node.regions and not (opdef.effects & ORDERED_EFFECTS)


def is_total(node: Node) -> bool:
    """Whether ``node`` is pure and cannot raise on well-typed inputs (may run speculatively)."""
    return node.op in TOTAL_OPS and is_pure(node)
