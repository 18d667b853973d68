"""Constant folding, static shape arithmetic included.

A pure node whose inputs are all known at compile time is evaluated with the
op's own reference (so the folded value is, by definition, what the node would
compute); a scalar result becomes a ``constant``, a uniform 1-D result a
``fill``, and any other small result stays as it is but is known to the nodes
after it. Shape arithmetic folds without knowing values:

* ``size(x)`` of a static first dim -> ``constant``;
* ``arange_like(x, s)`` of a static first dim -> ``arange(s) {length}``;
* ``dynamic_slice(x, c) {length}`` with a constant, in-bounds start -> ``slice``;
* ``where(c, a, b)`` with a constant scalar condition -> ``a`` or ``b``;
* a ``loop`` whose initial condition is the constant ``false`` -> its carried
  inputs (the body never runs, effects and all).

A node whose evaluation raises is left alone (it raises at run time, as before).

Before / after::

    %0: i64 = size(%f)          # %f: i64[3]          %0: i64 = constant() {value=3}
    %1: i64 = constant() {value=1}                  ->  %2: i64 = constant() {value=4}
    %2: i64 = add(%0, %1)                               %4: float = ...  (reads %a)
    %3: bool = constant() {dtype=bool, value=True}
    %4: float = where(%3, %a, %b)
"""

from __future__ import annotations

from typing import Any

import torch

from graphrt.ir import Graph, Node, Value
from graphrt.passes.effects import is_pure
from graphrt.passes.graph_utils import Rewriter
from graphrt.passes.manager import rewrite_pass
from graphrt.registry import get_op
from graphrt.types import TensorType

MAX_KNOWN_ELEMENTS = 4096
"""Largest folded tensor kept as a known value (bigger results are left to run time)."""

_DTYPES = {torch.int64: "i64", torch.bool: "bool", torch.float64: "float"}


class _Folder(Rewriter):
    COUNTS = ("folded", "pruned")

    def __init__(self) -> None:
        super().__init__()
        self.known: dict[int, torch.Tensor] = {}

    def keep(self, node: Node) -> bool:
        if node.op == "loop" and _known_false(node.inputs[0], self):
            for o, c in zip(node.outputs, node.inputs[1:]):
                self.subst.replace(o, c)
            self.counts["pruned"] += 1
            return False
        for region in node.regions:
            self.walk(region)
        replacement = _fold_shape(node, self)
        if replacement is not None:
            self.subst.replace(node.outputs[0], replacement)
            self.counts["pruned"] += 1
            return False
        _fold_value(node, self)
        return True


@rewrite_pass("``info`` counts ``folded`` nodes (values and shapes) and ``pruned`` branches/loops")
def fold_constants(graph: Graph) -> dict[str, int]:
    """Evaluate what is known at compile time (see the module docstring)."""
    return _Folder().run(graph)


def _known_false(v: Value, state: _Folder) -> bool:
    t = state.known.get(id(v))
    return t is not None and t.dim() == 0 and not bool(t)


def _static_first_dim(v: Value) -> int | None:
    t = v.type
    if isinstance(t, TensorType) and t.shape and isinstance(t.shape[0], int):
        return t.shape[0]
    return None


def _fold_shape(node: Node, state: _Folder) -> Value | None:
    """Shape arithmetic; mutates ``node`` in place, or returns a value that replaces its output."""
    op = node.op
    if op == "size":
        n = _static_first_dim(node.inputs[0])
        if n is not None:
            _become_constant(node, n, "i64", state)
    elif op == "arange_like":
        n = _static_first_dim(node.inputs[0])
        if n is not None:
            node.op, node.inputs, node.attrs = "arange", [node.inputs[1]], {"length": n}
            state.counts["folded"] += 1
    elif op == "dynamic_slice":
        n, start = _static_first_dim(node.inputs[0]), state.known.get(id(node.inputs[1]))
        length = node.attrs["length"]
        if n is not None and start is not None and 0 <= int(start) and int(start) + length <= n:
            s = int(start)
            node.op, node.inputs, node.attrs = "slice", [node.inputs[0]], {"start": s, "stop": s + length}
            state.counts["folded"] += 1
    elif op == "where":
        cond = state.known.get(id(node.inputs[0]))
        if cond is not None and cond.dim() == 0:
            branch = node.inputs[1] if bool(cond) else node.inputs[2]
            if branch.type == node.outputs[0].type:
                return branch
    return None


def _fold_value(node: Node, state: _Folder) -> None:
    if not is_pure(node) or len(node.outputs) != 1:
        return
    args = [state.known.get(id(v)) for v in node.inputs]
    if any(a is None for a in args):
        return
    opdef = get_op(node.op)
    try:
        attrs = opdef.resolve_attrs(node.attrs, f"node '{node.name}'")
        result = opdef.reference(*args, **attrs)  # type: ignore[misc]
    except Exception:  # noqa: BLE001 - the node raises at run time instead, as before
        return
    if not isinstance(result, torch.Tensor) or result.numel() > MAX_KNOWN_ELEMENTS:
        return
    state.known[id(node.outputs[0])] = result
    dtype = _DTYPES.get(result.dtype)
    if dtype is None or node.op in ("constant", "fill"):
        return
    if result.dim() == 0:
        _become_constant(node, result.item(), dtype, state)
    elif result.dim() == 1 and result.numel() > 0 and _uniform(result):
        node.op, node.inputs = "fill", []
        node.attrs = {"length": int(result.numel()), "value": result[0].item(), "dtype": dtype}
        state.counts["folded"] += 1


def _become_constant(node: Node, value: Any, dtype: str, state: _Folder) -> None:
    node.op, node.inputs, node.attrs = "constant", [], {"value": value, "dtype": dtype}
    state.known[id(node.outputs[0])] = get_op("constant").reference(value=value, dtype=dtype)  # type: ignore[misc]
    state.counts["folded"] += 1


def _uniform(t: torch.Tensor) -> bool:
    bits = t.view(torch.int64) if t.dtype == torch.float64 else t
    return bool((bits == bits[0]).all())
