"""Rewrite patterns traced from builder code and matched by use-def structure.

As ``torch.fx.subgraph_rewriter.replace_pattern`` traces its pattern function,
:func:`trace_pattern` runs a function that builds a chain with a
:class:`~graphrt.builder.GraphBuilder` over placeholder inputs (typically one
line calling a helper of :mod:`graphrt.library`), so the chain a rewrite
recognises is the chain the helper builds, written once. :meth:`Pattern.match`
then compares a candidate root node with the pattern's root and follows the
inputs of both, node by node:

* a pattern **node** matches a node of the same op, arity and attributes
  (defaults filled in); a pattern node reached twice must meet the same node
  twice, so shared values stay shared; commutative ops
  (:data:`~graphrt.passes.effects.COMMUTATIVE`) match either operand order;
* a pattern **constant** is a literal: it matches any ``constant`` of the same
  dtype and value (a duplicated or a merged constant alike);
* a **placeholder** (a pattern input) matches any value of its dtype and rank
  (any rank ending in its own, for a placeholder declared ``batched``); one
  placeholder reached twice must meet the same value;
* a **symbol** is a number the pattern leaves open (an attribute such as
  ``purpose``, a constant such as the mask id, a static dim): the tracing
  function asks :class:`Symbols` for it, gets a sentinel that appears nowhere
  else, and a match binds the sentinel's every occurrence to one value.

A match does not require the chain's inner values to be read only inside it:
a rewrite keeps the root's result and leaves the rest to dead-code elimination.

>>> from graphrt import library
>>> from graphrt.types import tensor
>>> p = trace_pattern("accept", lambda b, s: library.accept_length(
...     b, b.input("block", tensor("i64", "L")), b.input("ar_tokens", tensor("i64", "L"))))
>>> p.root.op
'sum'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from graphrt.builder import GraphBuilder, Var
from graphrt.ir import Graph, Node, Value
from graphrt.passes.effects import COMMUTATIVE
from graphrt.registry import get_op
from graphrt.types import TensorType

_SENTINEL_BASE, _SENTINEL_STEP = 2**40 + 1, 7919
"""Sentinel ``k`` is ``2**40 + 1 + 7919 k``: exact as int and as float, spaced apart, and no attribute of a real
chain."""


class Symbols:
    """Sentinel numbers that stand for a pattern's open parameters while it is traced."""

    def __init__(self) -> None:
        self.by_value: dict[int, tuple[str, type]] = {}
        self._names: dict[str, int] = {}

    def int(self, name: str) -> int:
        """The sentinel of the integer symbol ``name`` (an op attribute, an ``i64`` constant or a dim).

        Parameters
        ----------
        name:
            What a match binds it to, e.g. ``"mask_token_id"``.

        Returns
        -------
        int
        """
        return self._sentinel(name, int)

    def float(self, name: str) -> float:
        """As :meth:`int`, for a float symbol (a ``float`` constant such as ``"threshold"``)."""
        return float(self._sentinel(name, float))

    def _sentinel(self, name: str, kind: type) -> int:
        if name not in self._names:
            value = _SENTINEL_BASE + _SENTINEL_STEP * len(self._names)
            self._names[name] = value
            self.by_value[value] = (name, kind)
        value = self._names[name]
        if self.by_value[value][1] is not kind:
            raise ValueError(f"symbol '{name}': asked for as {kind.__name__}, first asked for as "
                             f"{self.by_value[value][1].__name__}")
        return value

    def lookup(self, x: Any) -> tuple[str, type] | None:
        """``(name, kind)`` when ``x`` is one of the sentinels handed out, else ``None``."""
        if isinstance(x, bool) or not isinstance(x, (int, float)) or x != x:
            return None
        return self.by_value.get(x)  # type: ignore[call-overload]


@dataclass
class Match:
    """What a pattern bound: placeholder name -> value, symbol name -> number."""

    values: dict[str, Value] = field(default_factory=dict)
    symbols: dict[str, Any] = field(default_factory=dict)
    nodes: dict[int, Node] = field(default_factory=dict)  # id(pattern node) -> matched node

    def copy(self) -> "Match":
        """An independent copy (for trying an alternative)."""
        return Match(dict(self.values), dict(self.symbols), dict(self.nodes))


@dataclass
class Pattern:
    """A traced chain: ``graph.outputs[0]`` is the root value; see the module docstring."""

    name: str
    graph: Graph
    symbols: Symbols
    batched: frozenset[str] = frozenset()
    _attrs_of: dict[int, list[tuple[str, Any, Any, "tuple[str, type] | None"]]] = field(default_factory=dict)
    _dims_of: dict[str, list[tuple[int, tuple[str, type]]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Per pattern node: (key, value, default, symbol) of each attribute; per placeholder: its symbolic dims."""
        for node in self.graph.nodes:
            defaults = get_op(node.op).attrs
            self._attrs_of[id(node)] = [(key, want, defaults[key], self.symbols.lookup(want))
                                        for key, want in node.attrs.items()]
        for v in self.graph.inputs:
            shape = v.type.shape if isinstance(v.type, TensorType) else ()
            self._dims_of[v.name] = [(i - len(shape), sym) for i, d in enumerate(shape)
                                     if (sym := self.symbols.lookup(d)) is not None]

    @property
    def root(self) -> Node:
        """The node whose result the chain computes."""
        node = self.graph.outputs[0].producer
        assert node is not None
        return node

    def match(self, node: Node) -> Match | None:
        """Whether the chain ending at ``node`` is this pattern, and what it bound.

        Parameters
        ----------
        node:
            The candidate root, in a graph whose values know their producers.

        Returns
        -------
        Match or None
            The bindings on a match.
        """
        found = Match()
        return found if self._node(self.root, node, found) else None

    def _node(self, pn: Node, tn: Node, m: Match) -> bool:
        if tn.op != pn.op or tn.regions or len(tn.inputs) != len(pn.inputs) or len(tn.outputs) != len(pn.outputs):
            return False
        if not self._attrs(pn, tn, m):
            return False
        m.nodes[id(pn)] = tn
        if pn.op in COMMUTATIVE and len(tn.inputs) == 2:
            trial = m.copy()
            if self._inputs(pn.inputs, tn.inputs, trial):
                m.values, m.symbols, m.nodes = trial.values, trial.symbols, trial.nodes
                return True
            return self._inputs(pn.inputs, tn.inputs[::-1], m)
        return self._inputs(pn.inputs, tn.inputs, m)

    def _inputs(self, want: list[Value], found: list[Value], m: Match) -> bool:
        for p, t in zip(want, found):
            if not self._value(p, t, m):
                return False
        return True

    def _value(self, pv: Value, tv: Value, m: Match) -> bool:
        pn, tn = pv.producer, tv.producer
        if pn is None:
            return self._placeholder(pv, tv, m)
        if tn is None or tn.outputs[pn.outputs.index(pv)] is not tv:
            return False
        if pn.op == "constant":
            return tn.op == "constant" and self._attrs(pn, tn, m)
        seen = m.nodes.get(id(pn))
        if seen is not None:
            return seen is tn
        return self._node(pn, tn, m)

    def _placeholder(self, pv: Value, tv: Value, m: Match) -> bool:
        bound = m.values.get(pv.name)
        if bound is not None:
            return bound is tv
        pt, tt = pv.type, tv.type
        if not isinstance(pt, TensorType):
            ok = tt == pt
        elif not isinstance(tt, TensorType) or tt.dtype != pt.dtype:
            ok = False
        elif pv.name in self.batched:
            ok = tt.rank >= pt.rank and self._dims(pv.name, tt.shape, m)
        else:
            ok = tt.rank == pt.rank and self._dims(pv.name, tt.shape, m)
        if ok:
            m.values[pv.name] = tv
        return ok

    def _dims(self, name: str, found: tuple[Any, ...], m: Match) -> bool:
        """Bind the symbolic dims of placeholder ``name`` (counted from the end) to ``found``'s."""
        return all(self._bind(sym, found[i], m) for i, sym in self._dims_of[name])

    def _attrs(self, pn: Node, tn: Node, m: Match) -> bool:
        """``pn``'s attributes (defaults filled in by :func:`trace_pattern`) against ``tn``'s, defaults included."""
        found = tn.attrs
        for key, want, default, sym in self._attrs_of[id(pn)]:
            value = found[key] if key in found else default
            if sym is not None:
                if not self._bind(sym, value, m):
                    return False
            elif want != value or isinstance(want, bool) != isinstance(value, bool):
                return False
        return True

    def _bind(self, sym: tuple[str, type], found: Any, m: Match) -> bool:
        """Bind symbol ``sym = (name, kind)`` to ``found``, consistently with an earlier binding."""
        name, kind = sym
        if isinstance(found, bool) or not isinstance(found, (int, float) if kind is float else int):
            return False
        found = kind(found)
        if name in m.symbols:
            return bool(m.symbols[name] == found)
        m.symbols[name] = found
        return True


def trace_pattern(name: str, build: Callable[[GraphBuilder, Symbols], Var],
                  batched: Iterable[str] = ()) -> Pattern:
    """Trace ``build`` into a :class:`Pattern`.

    Parameters
    ----------
    name:
        Shown in errors.
    build:
        ``build(b, symbols) -> root``: declares placeholders with ``b.input`` and
        builds the chain (the root is its result); ``symbols.int(...)`` /
        ``symbols.float(...)`` stand for what a match leaves open.
    batched:
        Placeholders that also match values with extra leading dims.

    Returns
    -------
    Pattern

    Raises
    ------
    ValueError
        A symbol asked for never reaches an attribute, a constant or a
        placeholder dim unchanged (the pattern could never bind it).
    """
    b = GraphBuilder(f"pattern_{name}")
    symbols = Symbols()
    graph = b.build([build(b, symbols)])
    for node in graph.nodes:  # defaults filled in once: a match compares them with the node's
        node.attrs = get_op(node.op).resolve_attrs(node.attrs, f"pattern '{name}', node '{node.name}'")
    seen = {v for n in graph.nodes for v in n.attrs.values() if symbols.lookup(v) is not None}
    seen |= {d for v in graph.inputs if isinstance(v.type, TensorType) for d in v.type.shape
             if symbols.lookup(d) is not None}
    missing = sorted(sym for value, (sym, _) in symbols.by_value.items() if value not in seen)
    if missing:
        raise ValueError(f"pattern '{name}': symbol(s) {missing} never reach an attribute, a constant or an "
                         "input dim unchanged, so no match could bind them")
    return Pattern(name, graph, symbols, frozenset(batched))



__all__ = ["Match", "Pattern", "Symbols", "trace_pattern"]
