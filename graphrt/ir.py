"""The graph IR: values, nodes, graphs with structured regions.

A :class:`Graph` holds :class:`Node` s in topological order, explicit inputs and
outputs. A node may own regions (sub-graphs): a ``loop`` owns its body, whose
inputs are the loop-carried values and whose outputs are
``(continue, *next carried)``. A region may read values of enclosing graphs
(implicit capture, as in ONNX ``Loop``); nothing outside a region may read a
value defined inside it.

Values are named uniquely within a top-level graph (SSA). Node names are unique
as well and are what errors, printers and schedules refer to.

The structure queries (:func:`region_reads`, :func:`node_reads`, the networkx
dataflow of :meth:`Graph.to_networkx`) and the stable text form
(:func:`format_graph`, what ``str(graph)`` and the golden files show) live here,
beside the IR they read, so the IR depends on no other graphrt module.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from graphrt.types import Type


class GraphError(ValueError):
    """A graph is malformed; the message names the node and what is wrong."""


@dataclass(eq=False)
class Value:
    """An SSA value: a graph/region input or one output of a node.

    ``users`` are the nodes whose inputs read it (insertion-ordered, as the keys
    of a dict); setting or editing a node's ``inputs`` keeps them in step, and
    :meth:`Node.unlink` takes a node out of them when a pass drops it. A value
    read only as a graph output has no users.
    """

    name: str
    type: Type
    producer: "Node | None" = field(default=None, repr=False)
    users: "dict[Node, None]" = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class _Inputs(list):  # type: ignore[type-arg]
    """A node's input list: every edit keeps its values' ``users`` in step."""

    __slots__ = ("_node",)


def _linked(node: "Node", values: "Iterable[Value]") -> _Inputs:
    """``values`` as ``node``'s input list, ``node`` recorded as a user of each."""
    inputs = _Inputs(values)
    inputs._node = node
    for v in inputs:
        v.users[node] = None
    return inputs


def _relinking(name: str) -> Callable[..., Any]:
    edit = getattr(list, name)

    def method(self: _Inputs, *args: Any) -> Any:
        for v in self:
            v.users.pop(self._node, None)
        try:
            return edit(self, *args)
        finally:
            for v in self:
                v.users[self._node] = None

    method.__name__ = name
    return method


for _name in ("__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend", "insert", "pop", "remove",
              "clear", "reverse", "sort"):
    setattr(_Inputs, _name, _relinking(_name))


class Node:
    """One operation: ``outputs = op(inputs; attrs) {regions}``.

    Its input values know it as a user (:attr:`Value.users`), as torch.fx's
    nodes know theirs; :attr:`users` are the nodes reading its results.
    """

    def __init__(self, op: str, inputs: "Iterable[Value]", outputs: "list[Value]",
                 attrs: "dict[str, Any] | None" = None, regions: "list[Graph] | None" = None, name: str = "") -> None:
        self.op = op
        self.outputs = outputs
        self.attrs = {} if attrs is None else attrs
        self.regions = [] if regions is None else regions
        self.name = name
        self._inputs = _linked(self, inputs)

    @property
    def inputs(self) -> "list[Value]":
        """The values this node reads, in order (a list; editing it keeps ``users`` in step)."""
        return self._inputs

    @inputs.setter
    def inputs(self, values: "Iterable[Value]") -> None:
        for v in self._inputs:
            v.users.pop(self, None)
        self._inputs = _linked(self, values)

    @property
    def users(self) -> "dict[Node, None]":
        """The nodes that read any of this node's results, in the order they started to."""
        out: dict[Node, None] = {}
        for v in self.outputs:
            out.update(v.users)
        return out

    def unlink(self) -> None:
        """Stop counting as a user of the values this node (and any node of its regions) reads.

        Passes call it on a node they drop; the node's inputs stay as they were.
        """
        for v in self._inputs:
            v.users.pop(self, None)
        for region in self.regions:
            for node in region.nodes:
                node.unlink()

    def __repr__(self) -> str:
        return f"Node({self.name}: {self.op})"


@dataclass(eq=False)
class Graph:
    """A straight-line list of nodes in topological order, with inputs and outputs.

    ``annotations`` holds what analyses attach to a top-level graph (the
    passes' memory plan, stream schedule and capture plan, by those keys).
    """

    name: str
    inputs: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    annotations: dict[str, Any] = field(default_factory=dict, repr=False)

    def walk(self) -> Iterator[Node]:
        """Every node of this graph and of its nested regions, pre-order."""
        for node in self.nodes:
            yield node
            for region in node.regions:
                yield from region.walk()

    def num_nodes(self) -> int:
        """Node count including nested regions."""
        return sum(1 for _ in self.walk())

    def to_networkx(self) -> "Any":
        """Dataflow of this graph's own nodes as a ``networkx.DiGraph``.

        Nodes are node names (graph inputs appear as ``"input:<name>"``); an edge
        ``u -> v`` carries attribute ``values`` (names of values flowing from
        ``u`` to ``v``). Reads by a nested region of ``v`` count as reads by ``v``.
        """
        return dataflow_graph(self)

    def __str__(self) -> str:
        return format_graph(self)


class NameGen:
    """Fresh, unique names for values and nodes of one top-level graph."""

    def __init__(self, taken: "set[str] | None" = None) -> None:
        self._taken: set[str] = set(taken or ())
        self._counter = itertools.count()

    def fresh(self, hint: str = "") -> str:
        """A new name, ``hint`` itself if free, else ``hint.N`` or ``N``."""
        if hint and hint not in self._taken:
            self._taken.add(hint)
            return hint
        while True:
            n = next(self._counter)
            name = f"{hint}.{n}" if hint else str(n)
            if name not in self._taken:
                self._taken.add(name)
                return name

    @classmethod
    def for_graph(cls, graph: Graph) -> "NameGen":
        """A generator that avoids every value and node name already in ``graph``."""
        taken = {v.name for v in graph.inputs}
        for node in graph.walk():
            taken.add(node.name)
            taken.update(v.name for v in node.outputs)
            for region in node.regions:
                taken.update(v.name for v in region.inputs)
        return cls(taken)


# ----------------------------------------------------------------------------- structure queries

def region_reads(node: Node) -> list[Value]:
    """Values read by ``node``'s regions that are defined outside them (captures)."""
    inner: set[int] = set()
    reads: list[Value] = []
    seen: set[int] = set()
    for region in node.regions:
        inner.update(id(v) for v in region.inputs)
        for n in region.walk():
            inner.update(id(v) for v in n.outputs)
            for r in n.regions:
                inner.update(id(v) for v in r.inputs)
        for n in region.walk():
            for v in n.inputs:
                if id(v) not in inner and id(v) not in seen:
                    seen.add(id(v))
                    reads.append(v)
        for v in region.outputs:
            if id(v) not in inner and id(v) not in seen:
                seen.add(id(v))
                reads.append(v)
    return reads


def node_reads(node: Node) -> list[Value]:
    """Every value ``node`` reads: its inputs, then its regions' captures."""
    return list(node.inputs) + [v for v in region_reads(node) if all(v is not w for w in node.inputs)]


def dataflow_graph(graph: Graph) -> Any:
    """``networkx.DiGraph`` of ``graph``'s own nodes (see :meth:`Graph.to_networkx`)."""
    import networkx as nx

    dg = nx.DiGraph()
    producer: dict[int, str] = {}
    for v in graph.inputs:
        key = f"input:{v.name}"
        dg.add_node(key, op="input", value=v.name)
        producer[id(v)] = key
    for node in graph.nodes:
        dg.add_node(node.name, op=node.op)
        for v in node.outputs:
            producer[id(v)] = node.name
    for node in graph.nodes:
        for v in node_reads(node):
            src = producer.get(id(v))
            if src is None:
                continue  # defined in an enclosing graph
            if dg.has_edge(src, node.name):
                dg.edges[src, node.name]["values"].append(v.name)
            else:
                dg.add_edge(src, node.name, values=[v.name])
    return dg


# ----------------------------------------------------------------------------- text form

def _attr(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return v
    return str(v)


def format_node(node: Node, indent: str = "  ") -> list[str]:
    """Lines of one node (and its regions)."""
    outs = ", ".join(f"%{v.name}: {v.type}" for v in node.outputs)
    ins = ", ".join(f"%{v.name}" for v in node.inputs)
    attrs = ", ".join(f"{k}={_attr(v)}" for k, v in sorted(node.attrs.items()))
    head = f"{outs} = " if outs else ""
    line = f"{indent}{head}{node.op}({ins})" + (f" {{{attrs}}}" if attrs else "") + f"  # {node.name}"
    lines = [line]
    for region in node.regions:
        params = ", ".join(f"%{v.name}: {v.type}" for v in region.inputs)
        lines.append(f"{indent}  region {region.name}({params}) {{")
        for inner in region.nodes:
            lines.extend(format_node(inner, indent + "    "))
        lines.append(f"{indent}    yield " + ", ".join(f"%{v.name}" for v in region.outputs))
        lines.append(f"{indent}  }}")
    return lines


def format_graph(graph: Graph) -> str:
    """The whole graph as text."""
    params = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    lines = [f"graph {graph.name}({params}) {{"]
    for node in graph.nodes:
        lines.extend(format_node(node))
    lines.append("  return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines)
