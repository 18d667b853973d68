"""Exact JSON round trip of graphs (names, types, attributes, regions).

Floats that JSON cannot spell (``inf``, ``nan``) are stored as Python's json
module writes them (``Infinity``, ``NaN``) and read back identically.
"""

from __future__ import annotations

import json
from typing import Any

from graphrt.ir import Graph, GraphError, Node, Value
from graphrt.types import type_from_json, type_to_json

FORMAT_VERSION = 1


def graph_to_dict(graph: Graph) -> dict[str, Any]:
    """Plain-data form of ``graph``."""
    return {
        "name": graph.name,
        "inputs": [{"name": v.name, "type": type_to_json(v.type)} for v in graph.inputs],
        "nodes": [
            {
                "name": n.name,
                "op": n.op,
                "inputs": [v.name for v in n.inputs],
                "outputs": [{"name": v.name, "type": type_to_json(v.type)} for v in n.outputs],
                "attrs": n.attrs,
                "regions": [graph_to_dict(r) for r in n.regions],
            }
            for n in graph.nodes
        ],
        "outputs": [v.name for v in graph.outputs],
    }


def graph_to_json(graph: Graph, indent: int | None = None) -> str:
    """JSON text of ``graph``."""
    return json.dumps({"graphrt_graph": FORMAT_VERSION, "graph": graph_to_dict(graph)}, indent=indent)


def graph_from_dict(data: dict[str, Any], scope: dict[str, Value] | None = None) -> Graph:
    """Inverse of :func:`graph_to_dict`; ``scope`` holds enclosing values visible to a region."""
    scope = dict(scope or {})
    graph = Graph(data["name"])
    for item in data["inputs"]:
        v = Value(item["name"], type_from_json(item["type"]))
        graph.inputs.append(v)
        scope[v.name] = v
    for item in data["nodes"]:
        inputs = []
        for name in item["inputs"]:
            if name not in scope:
                # Keep dangling references loadable so that verify() can report them.
                scope[name] = Value(name, type_from_json("cache"))
            inputs.append(scope[name])
        node = Node(item["op"], inputs, [], dict(item["attrs"]), [], item["name"])
        node.regions = [graph_from_dict(r, scope) for r in item["regions"]]
        for out in item["outputs"]:
            v = Value(out["name"], type_from_json(out["type"]), node)
            node.outputs.append(v)
            scope[v.name] = v
        graph.nodes.append(node)
    for name in data["outputs"]:
        if name not in scope:
            raise GraphError(f"graph '{graph.name}': output %{name} is not defined")
        graph.outputs.append(scope[name])
    return graph


def graph_from_json(text: str) -> Graph:
    """Parse JSON written by :func:`graph_to_json`; ``ValueError`` on a foreign document."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("graphrt_graph") != FORMAT_VERSION:
        found = data.get("graphrt_graph") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"graph JSON: expected a graphrt graph document of format {FORMAT_VERSION}, found {found!r}")
    return graph_from_dict(data["graph"])
