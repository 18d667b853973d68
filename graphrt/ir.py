"""The graph IR: values, nodes, graphs with structured regions.

A :class:`Graph` holds :class:`Node` s in topological order, explicit inputs and
outputs. A node may own regions (sub-graphs): a ``loop`` owns its body, whose
inputs are the loop-carried values and whose outputs are
``(continue, *next carried)``. A region may read values of enclosing graphs
(implicit capture, as in ONNX ``Loop``); nothing outside a region may read a
value defined inside it.

Values are named uniquely within a top-level graph (SSA). Node names are unique
as well and are what errors, printers and schedules refer to.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator

from graphrt.types import Type


class GraphError(ValueError):
    """A graph is malformed; the message names the node and what is wrong."""


@dataclass(eq=False)
class Value:
    """An SSA value: a graph/region input or one output of a node."""

    name: str
    type: Type
    producer: "Node | None" = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


@dataclass(eq=False)
class Node:
    """One operation: ``outputs = op(inputs; attrs) {regions}``."""

    op: str
    inputs: list[Value]
    outputs: list[Value]
    attrs: dict[str, Any] = field(default_factory=dict)
    regions: list["Graph"] = field(default_factory=list)
    name: str = ""

    def __repr__(self) -> str:
        return f"Node({self.name}: {self.op})"


@dataclass(eq=False)
class Graph:
    """A straight-line list of nodes in topological order, with inputs and outputs."""

    name: str
    inputs: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)

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
        from graphrt.analysis import dataflow_graph

        return dataflow_graph(self)

    def __str__(self) -> str:
        from graphrt.printer import format_graph

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


def replace_uses(graph: Graph, old: Value, new: Value) -> int:
    """Replace every read of ``old`` (in ``graph`` and its regions, and in outputs) by ``new``."""
    count = 0
    for g in _graphs(graph):
        for node in g.nodes:
            for i, v in enumerate(node.inputs):
                if v is old:
                    node.inputs[i] = new
                    count += 1
        for i, v in enumerate(g.outputs):
            if v is old:
                g.outputs[i] = new
                count += 1
    return count


def _graphs(graph: Graph) -> Iterator[Graph]:
    yield graph
    for node in graph.nodes:
        for region in node.regions:
            yield from _graphs(region)


def clone_graph(graph: Graph) -> Graph:
    """Deep copy with the same names (values are new objects)."""
    from graphrt.serialize import graph_from_json, graph_to_json

    return graph_from_json(graph_to_json(graph))
