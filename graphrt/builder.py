"""The builder: policies written as Python that reads like the algorithm.

>>> b = GraphBuilder("demo")
>>> x = b.input("x", tensor("i64", "L"))
>>> y = (x + 1).cumsum()
>>> g = b.build()
>>> [n.op for n in g.nodes]
['constant', 'add', 'cumsum']

Every registered op is a method (``b.argmax(x)``, ``b.forward(cache, tokens,
positions, attention="causal")``); :class:`Var` overloads arithmetic,
comparison, logic and static indexing; Python numbers mixed with a ``Var``
become constants. Structured iteration is :meth:`GraphBuilder.loop`, which
traces a Python function into the loop's body region. Types are inferred as
nodes are created, so a mistake fails at the line that made it.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from graphrt.ir import Graph, GraphError, NameGen, Node, Value
from graphrt.registry import get_op, has_op
from graphrt.types import TensorType, Type, tensor  # noqa: F401  (tensor re-exported for doctests)
from graphrt.verify import verify


class Var:
    """A builder handle on an IR value, with operator overloading."""

    __slots__ = ("builder", "value")
    __hash__ = object.__hash__

    def __init__(self, builder: "GraphBuilder", value: Value) -> None:
        self.builder = builder
        self.value = value

    @property
    def type(self) -> Type:
        """The value's type."""
        return self.value.type

    def __repr__(self) -> str:
        return f"Var(%{self.value.name}: {self.value.type})"

    def _bin(self, op: str, other: Any, swap: bool = False) -> "Var":
        other = self.builder.lift(other, like=self)
        return self.builder.op(op, other, self) if swap else self.builder.op(op, self, other)

    def __add__(self, o: Any) -> "Var": return self._bin("add", o)
    def __radd__(self, o: Any) -> "Var": return self._bin("add", o, True)
    def __sub__(self, o: Any) -> "Var": return self._bin("sub", o)
    def __rsub__(self, o: Any) -> "Var": return self._bin("sub", o, True)
    def __mul__(self, o: Any) -> "Var": return self._bin("mul", o)
    def __rmul__(self, o: Any) -> "Var": return self._bin("mul", o, True)
    def __truediv__(self, o: Any) -> "Var": return self._bin("div", o)
    def __eq__(self, o: Any) -> "Var": return self._bin("eq", o)  # type: ignore[override]
    def __ne__(self, o: Any) -> "Var": return self._bin("ne", o)  # type: ignore[override]
    def __lt__(self, o: Any) -> "Var": return self._bin("lt", o)
    def __le__(self, o: Any) -> "Var": return self._bin("le", o)
    def __gt__(self, o: Any) -> "Var": return self._bin("gt", o)
    def __ge__(self, o: Any) -> "Var": return self._bin("ge", o)
    def __and__(self, o: Any) -> "Var": return self._bin("and", o)
    def __or__(self, o: Any) -> "Var": return self._bin("or", o)
    def __invert__(self) -> "Var": return self.builder.op("not", self)
    def __neg__(self) -> "Var": return self.builder.op("neg", self)

    def __getitem__(self, key: int | slice) -> "Var":
        """Static indexing along the first dim: ``x[-1]`` (drops the dim) or ``x[1:]``."""
        if isinstance(key, int):
            stop = key + 1 if key != -1 else None
            return self.builder.op("slice", self, start=key, stop=stop, squeeze=True)
        if isinstance(key, slice) and key.step in (None, 1):
            return self.builder.op("slice", self, start=key.start or 0, stop=key.stop)
        raise TypeError(f"Var indexing: expected an int or a step-1 slice, found {key!r}")

    def __getattr__(self, name: str) -> Callable[..., Any]:
        """``x.cumsum()`` is ``builder.cumsum(x)`` for any registered op."""
        if name.startswith("_") or not has_op(name):
            raise AttributeError(name)
        return lambda *args, **attrs: self.builder.op(name, self, *args, **attrs)


class GraphBuilder:
    """Builds a verified :class:`Graph`, one op call at a time."""

    def __init__(self, name: str) -> None:
        self.names = NameGen()
        self._stack: list[Graph] = [Graph(name)]

    @property
    def graph(self) -> Graph:
        """The graph (or region) currently being built."""
        return self._stack[-1]

    def input(self, name: str, type_: Type) -> Var:
        """Declare a graph input."""
        if len(self._stack) != 1:
            raise GraphError(f"input '{name}': inputs belong to the top-level graph, not a region")
        v = Value(self.names.fresh(name), type_)
        self.graph.inputs.append(v)
        return Var(self, v)

    def lift(self, x: Any, like: Var | None = None) -> Var:
        """``x`` as a Var: Vars pass through, Python numbers become constants (dtype from ``like``)."""
        if isinstance(x, Var):
            return x
        if isinstance(x, bool):
            return self.const(x, "bool")
        if isinstance(x, int):
            float_like = like is not None and isinstance(like.type, TensorType) and like.type.dtype == "float"
            return self.const(float(x), "float") if float_like else self.const(x, "i64")
        if isinstance(x, float):
            return self.const(x, "float")
        raise TypeError(f"builder: expected a Var or a Python number, found {type(x).__name__}")

    def const(self, value: Any, dtype: str = "i64") -> Var:
        """A scalar constant."""
        return self.op("constant", value=value, dtype=dtype)

    def op(self, name: str, *inputs: Any, regions: Sequence[Graph] = (), **attrs: Any) -> Any:
        """Append a node of op ``name``; returns a Var, a tuple of Vars, or ``None``.

        Raises :class:`GraphError` naming the new node if the op is unknown or its
        inputs do not type-check.
        """
        if not has_op(name):
            raise GraphError(f"builder: op '{name}' is not registered")
        opdef = get_op(name)
        vals = [self.lift(x).value for x in inputs]
        node_name = self.names.fresh(name)
        where = f"node '{node_name}' ({name})"
        problem = opdef.check_arity(len(vals))
        if problem:
            raise GraphError(f"{where}: wrong arity: expected {problem}, found {len(vals)}")
        try:
            full = opdef.resolve_attrs(attrs, where)
            out_types = opdef.infer([v.type for v in vals], full)
        except ValueError as exc:
            raise GraphError(f"{where}: {exc}") from None
        node = Node(name, vals, [], dict(attrs), list(regions), node_name)
        node.outputs = [Value(self.names.fresh(), t, node) for t in out_types]
        self.graph.nodes.append(node)
        outs = [Var(self, v) for v in node.outputs]
        if not outs:
            return None
        return outs[0] if len(outs) == 1 else tuple(outs)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_") or not has_op(name):
            raise AttributeError(f"GraphBuilder has no attribute or registered op '{name}'")
        return lambda *inputs, **attrs: self.op(name, *inputs, **attrs)

    def loop(self, cond: Var | bool, carried: Sequence[Var], body: Callable[..., Sequence[Any]],
             name: str = "body") -> list[Var]:
        """Structured ``while`` loop.

        ``body(*carried) -> (cond, *next_carried)`` is traced once into the loop's
        region; the loop runs while ``cond`` holds and returns the final carried
        values. The body may read any value visible where the loop is built.
        """
        carried_vars = [self.lift(c) for c in carried]
        region = Graph(self.names.fresh(name))
        for c in carried_vars:
            region.inputs.append(Value(self.names.fresh(c.value.name.split(".")[0]), c.type))
        self._stack.append(region)
        try:
            results = list(body(*[Var(self, v) for v in region.inputs]))
            if len(results) != 1 + len(carried_vars):
                raise GraphError(f"loop '{region.name}': body must return (cond, *carried) = "
                                 f"{1 + len(carried_vars)} values, returned {len(results)}")
            region.outputs = [self.lift(r).value for r in results]
        finally:
            self._stack.pop()
        out = self.op("loop", cond, *carried_vars, regions=[region])
        if out is None:
            return []
        return [out] if isinstance(out, Var) else list(out)

    def build(self, outputs: Sequence[Var] = ()) -> Graph:
        """Finish the graph with ``outputs`` and :func:`verify` it."""
        if len(self._stack) != 1:
            raise GraphError("build(): a loop body is still open")
        self.graph.outputs = [o.value for o in outputs]
        return verify(self.graph)


__all__ = ["GraphBuilder", "Var"]
