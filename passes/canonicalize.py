"""Canonicalization: one normal form, so later patterns see one spelling.

Rewrites (each exact, bit for bit):

* constants go to the right of commutative ops: ``add(1, x) -> add(x, 1)``;
  comparisons with a constant on the left are mirrored: ``lt(0, x) -> gt(x, 0)``;
* identities disappear: ``not(not(x))``, ``neg(neg(x))``, ``cast`` to the dtype
  ``x`` already has, ``where(c, x, x)``, a full ``slice``, a one-input
  ``concat``, ``and(x, true)``, ``or(x, false)``, and for integers
  ``add(x, 0)``, ``sub(x, 0)``, ``mul(x, 1)``; each only when the result type
  equals ``x``'s type.

Before / after::

    %2: i64 = add(%c1, %x)            %2: i64 = add(%x, %c1)
    %3: bool = lt(%c0, %2)      ->    %3: bool = gt(%2, %c0)
    %4: bool = not(%3)                %6: i64 = where(%3, %b, %a)   (reads %3 directly)
    %5: bool = not(%4)
    %6: i64 = where(%5, %b, %a)
"""

from __future__ import annotations

from graphrt.ir import Graph, Node, Value
from graphrt.passes.effects import COMMUTATIVE, FLIPPED
from graphrt.passes.graph_utils import Rewriter
from graphrt.passes.manager import rewrite_pass
from graphrt.types import TensorType


class _Canonicalizer(Rewriter):
    COUNTS = ("swapped", "removed")

    def __init__(self) -> None:
        super().__init__()
        self.defs: dict[int, Node] = {}

    def const(self, v: Value) -> Node | None:
        node = self.defs.get(id(v))
        return node if node is not None and node.op == "constant" else None

    def const_value(self, v: Value) -> object:
        node = self.const(v)
        return None if node is None else node.attrs.get("value")

    def keep(self, node: Node) -> bool:
        for region in node.regions:
            self.walk(region)
        _reorder(node, self)
        same = _identity_of(node, self)
        if same is not None:
            self.subst.replace(node.outputs[0], same)
            self.counts["removed"] += 1
            return False
        for v in node.outputs:
            self.defs[id(v)] = node
        return True


@rewrite_pass("``info`` counts ``swapped`` operands and ``removed`` identities")
def canonicalize(graph: Graph) -> dict[str, int]:
    """Put ``graph`` in canonical form (see the module docstring)."""
    return _Canonicalizer().run(graph)


def _reorder(node: Node, state: _Canonicalizer) -> None:
    if len(node.inputs) != 2 or not (node.op in COMMUTATIVE or node.op in FLIPPED):
        return
    lhs, rhs = node.inputs
    if state.const(lhs) is None or state.const(rhs) is not None:
        return
    node.inputs = [rhs, lhs]
    if node.op in FLIPPED:
        node.op = FLIPPED[node.op]
    state.counts["swapped"] += 1


def _identity_of(node: Node, state: _Canonicalizer) -> Value | None:
    """The value ``node``'s single output always equals (with the same type), or None."""
    if len(node.outputs) != 1 or node.regions:
        return None
    out = node.outputs[0]
    candidate = _candidate(node, state)
    if candidate is None or candidate.type != out.type:
        return None
    return candidate


def _candidate(node: Node, state: _Canonicalizer) -> Value | None:
    op, ins = node.op, node.inputs
    if op in ("not", "neg"):
        inner = state.defs.get(id(ins[0]))
        return inner.inputs[0] if inner is not None and inner.op == op else None
    if op == "cast":
        t = ins[0].type
        return ins[0] if isinstance(t, TensorType) and t.dtype == node.attrs.get("dtype") else None
    if op == "where":
        return ins[1] if ins[1] is ins[2] else None
    if op == "concat":
        return ins[0] if len(ins) == 1 else None
    if op == "slice":
        return ins[0] if _full_slice(node) else None
    if op in ("and", "or", "add", "sub", "mul") and len(ins) == 2:
        value = state.const_value(ins[1])
        if value is None:
            return None
        neutral = {"and": True, "or": False, "add": 0, "sub": 0, "mul": 1}[op]
        dtype = {"and": "bool", "or": "bool"}.get(op, "i64")
        const = state.const(ins[1])
        if const is not None and const.attrs.get("dtype", "i64") == dtype and value == neutral \
                and type(value) is type(neutral):
            return ins[0]
    return None


def _full_slice(node: Node) -> bool:
    if node.attrs.get("squeeze", False) or node.attrs.get("start", 0) != 0:
        return False
    stop = node.attrs.get("stop")
    if stop is None:
        return True
    n = node.inputs[0].type.shape[0]  # type: ignore[union-attr]
    return isinstance(n, int) and stop >= n
