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


def graph_from_dict(data: dict[str, Any], scope: dict[str, Value] | None = None, where: str = "graph") -> Graph:
    """Inverse of :func:`graph_to_dict`; ``scope`` holds enclosing values visible to a region.

    Raises :class:`GraphError` naming the place (``graph.nodes[3].inputs``, ...) where the
    document is not of the form :func:`graph_to_dict` writes.
    """
    scope = dict(scope or {})
    graph = Graph(_field(data, "name", str, where))
    for i, item in enumerate(_field(data, "inputs", list, where)):
        v = Value(_field(item, "name", str, f"{where}.inputs[{i}]"), _type(item, f"{where}.inputs[{i}]"))
        graph.inputs.append(v)
        scope[v.name] = v
    for i, item in enumerate(_field(data, "nodes", list, where)):
        at = f"{where}.nodes[{i}]"
        inputs = []
        for name in _field(item, "inputs", list, at):
            if not isinstance(name, str):
                raise GraphError(f"graph JSON: {at}.inputs: expected value names (strings), found {name!r}")
            if name not in scope:
                # Keep dangling references loadable so that verify() can report them.
                scope[name] = Value(name, type_from_json("cache"))
            inputs.append(scope[name])
        node = Node(_field(item, "op", str, at), inputs, [], dict(_field(item, "attrs", dict, at)), [],
                    _field(item, "name", str, at))
        node.regions = [graph_from_dict(r, scope, f"{at}.regions[{j}]")
                        for j, r in enumerate(_field(item, "regions", list, at))]
        for j, out in enumerate(_field(item, "outputs", list, at)):
            v = Value(_field(out, "name", str, f"{at}.outputs[{j}]"), _type(out, f"{at}.outputs[{j}]"), node)
            node.outputs.append(v)
            scope[v.name] = v
        graph.nodes.append(node)
    for name in _field(data, "outputs", list, where):
        if not isinstance(name, str) or name not in scope:
            raise GraphError(f"graph '{graph.name}': output %{name} is not defined")
        graph.outputs.append(scope[name])
    return graph


def _field(obj: Any, key: str, kind: type, where: str) -> Any:
    """``obj[key]``, checked to be an object's field of type ``kind``; ``GraphError`` naming ``where`` otherwise."""
    if not isinstance(obj, dict):
        raise GraphError(f"graph JSON: {where}: expected an object, found {type(obj).__name__} {obj!r:.60}")
    if key not in obj:
        raise GraphError(f"graph JSON: {where}: expected a '{key}' field, found none (fields: {sorted(obj)})")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise GraphError(f"graph JSON: {where}.{key}: expected {kind.__name__}, found {type(value).__name__} "
                         f"{value!r:.60}")
    return value


def _type(item: Any, where: str) -> Any:
    try:
        return type_from_json(_field(item, "type", object, where))
    except ValueError as exc:
        raise GraphError(f"graph JSON: {where}.type: {exc}") from None


def graph_from_json(text: str) -> Graph:
    """Parse JSON written by :func:`graph_to_json`; ``ValueError`` on a foreign document."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("graphrt_graph") != FORMAT_VERSION:
        found = data.get("graphrt_graph") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"graph JSON: expected a graphrt graph document of format {FORMAT_VERSION}, found {found!r}")
    return graph_from_dict(_field(data, "graph", dict, "document"))
