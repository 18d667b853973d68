"""The verifier: a graph lints itself.

:func:`verify` checks ownership and order (every input defined earlier in scope,
no cycles, nothing read outside its region), registration and arity, attributes,
types and shapes (re-inferred and compared with the recorded output types),
region well-formedness (loop bodies) and effects (no cache write in a read-only
forward, a cache state written at most once). It raises :class:`GraphError`
naming the node and what is wrong.
"""

from __future__ import annotations

import networkx as nx

from graphrt.ir import Graph, GraphError, Node, Value
from graphrt.registry import get_op, has_op
from graphrt.types import CacheType, TensorType, Type, shapes_compatible


def verify(graph: Graph) -> Graph:
    """Check ``graph``; return it unchanged or raise :class:`GraphError`."""
    _check_unique_names(graph)
    owner = _definitions(graph)
    cache_writers: dict[int, Node] = {}
    _verify_region(graph, {id(v) for v in graph.inputs}, owner, cache_writers, where=f"graph '{graph.name}'")
    return graph


def types_match(recorded: Type, inferred: Type) -> bool:
    """Whether a recorded value type agrees with the type the op's rule infers."""
    if isinstance(recorded, CacheType) or isinstance(inferred, CacheType):
        return isinstance(recorded, CacheType) and isinstance(inferred, CacheType)
    assert isinstance(recorded, TensorType) and isinstance(inferred, TensorType)
    return recorded.dtype == inferred.dtype and shapes_compatible(recorded.shape, inferred.shape)


def _check_unique_names(graph: Graph) -> None:
    seen_values: dict[str, str] = {}
    seen_nodes: set[str] = set()

    def value(v: Value, where: str) -> None:
        if v.name in seen_values:
            raise GraphError(f"{where}: value name %{v.name} is defined twice (also by {seen_values[v.name]})")
        seen_values[v.name] = where

    def walk(g: Graph, where: str) -> None:
        for v in g.inputs:
            value(v, where)
        for node in g.nodes:
            if not node.name or node.name in seen_nodes:
                raise GraphError(f"node '{node.name}' ({node.op}): node names must be unique and non-empty")
            seen_nodes.add(node.name)
            for v in node.outputs:
                value(v, f"node '{node.name}'")
            for i, region in enumerate(node.regions):
                walk(region, f"node '{node.name}' region {i}")

    walk(graph, f"graph '{graph.name}'")


def _definitions(graph: Graph) -> dict[int, str]:
    """id(value) -> description of where it is defined (any depth)."""
    owner: dict[int, str] = {}

    def walk(g: Graph, where: str, inside: str) -> None:
        for v in g.inputs:
            owner[id(v)] = f"{where} inputs"
        for node in g.nodes:
            for v in node.outputs:
                owner[id(v)] = f"node '{node.name}'{inside}"
            for region in node.regions:
                walk(region, f"the region of node '{node.name}'", f" inside the region of node '{node.name}'")

    walk(graph, f"graph '{graph.name}'", "")
    return owner


def _verify_region(graph: Graph, visible: set[int], owner: dict[int, str], cache_writers: dict[int, Node],
                   where: str) -> None:
    visible = set(visible) | {id(v) for v in graph.inputs}
    local_later = {id(v): n for n in graph.nodes for v in n.outputs}
    for node in graph.nodes:
        _check_inputs(graph, node, visible, local_later, owner)
        _check_node(node, cache_writers)
        for region in node.regions:
            _verify_region(region, visible, owner, cache_writers, where=f"region of node '{node.name}'")
            _check_region_reads(region, visible, owner, node)
        visible.update(id(v) for v in node.outputs)
    for v in graph.outputs:
        if id(v) not in visible:
            raise GraphError(f"{where}: output %{v.name} is not defined in scope "
                             f"({'defined in ' + owner[id(v)] if id(v) in owner else 'dangling'})")


def _check_region_reads(region: Graph, visible: set[int], owner: dict[int, str], node: Node) -> None:
    """Values a region reads from outside must be visible where its owner node stands."""
    inner = {id(v) for v in region.inputs} | {id(v) for n in region.walk() for v in n.outputs}
    inner |= {id(v) for n in region.walk() for r in n.regions for v in r.inputs}
    for n in region.walk():
        for v in n.inputs:
            if id(v) not in inner and id(v) not in visible:
                raise GraphError(f"node '{n.name}' ({n.op}): reads %{v.name}, which is not visible at node "
                                 f"'{node.name}' ({_where(v, owner)})")


def _where(v: Value, owner: dict[int, str]) -> str:
    return f"defined in {owner[id(v)]}" if id(v) in owner else "defined nowhere: a dangling input"


def _check_inputs(graph: Graph, node: Node, visible: set[int], local_later: dict[int, Node],
                  owner: dict[int, str]) -> None:
    for i, v in enumerate(node.inputs):
        if id(v) in visible:
            continue
        if id(v) in local_later:
            cycle = _find_cycle(graph)
            if cycle:
                raise GraphError(f"node '{node.name}' ({node.op}): cycle through nodes {' -> '.join(cycle)}")
            raise GraphError(f"node '{node.name}' ({node.op}): input {i} %{v.name} is used before node "
                             f"'{local_later[id(v)].name}' defines it (nodes are not in topological order)")
        if id(v) in owner:
            raise GraphError(f"node '{node.name}' ({node.op}): input {i} %{v.name} is used outside its region "
                             f"({_where(v, owner)})")
        raise GraphError(f"node '{node.name}' ({node.op}): input {i} %{v.name} is dangling (no node or graph input "
                         "defines it)")


def _find_cycle(graph: Graph) -> list[str]:
    dg = graph.to_networkx()
    try:
        edges = nx.find_cycle(dg)
    except nx.NetworkXNoCycle:
        return []
    return [u for u, _ in edges] + [edges[0][0]]


def _check_node(node: Node, cache_writers: dict[int, Node]) -> None:
    label = f"node '{node.name}' ({node.op})"
    if not has_op(node.op):
        raise GraphError(f"{label}: op '{node.op}' is not registered (register it with graphrt.register_op)")
    opdef = get_op(node.op)
    problem = opdef.check_arity(len(node.inputs))
    if problem:
        raise GraphError(f"{label}: wrong arity: expected {problem}, found {len(node.inputs)}")
    try:
        attrs = opdef.resolve_attrs(node.attrs, label)
    except ValueError as exc:
        raise GraphError(str(exc)) from None
    if len(node.regions) != opdef.num_regions:
        raise GraphError(f"{label}: expected {opdef.num_regions} region(s), found {len(node.regions)}")
    if node.op == "forward" and attrs["write"] == "none" and len(node.outputs) > 1:
        raise GraphError(f"{label}: cache write inside a read-only forward (write='none' but it yields a new "
                         "cache state)")
    try:
        inferred = opdef.infer([v.type for v in node.inputs], attrs)
    except ValueError as exc:
        raise GraphError(f"{label}: type/shape mismatch: {exc}") from None
    if len(inferred) != len(node.outputs):
        raise GraphError(f"{label}: expected {len(inferred)} output(s) {[str(t) for t in inferred]}, "
                         f"found {len(node.outputs)}")
    for v, t in zip(node.outputs, inferred):
        if not types_match(v.type, t):
            raise GraphError(f"{label}: type/shape mismatch: output %{v.name} is recorded as {v.type}, "
                             f"the op's rule gives {t}")
    if node.op == "loop":
        _check_loop(node, label)
    if "writes_cache" in opdef.effects:
        for v in node.inputs:
            if isinstance(v.type, CacheType) and (node.op != "forward" or attrs["write"] != "none"):
                if id(v) in cache_writers:
                    raise GraphError(f"{label}: cache state %{v.name} is already written by node "
                                     f"'{cache_writers[id(v)].name}'; thread the cache through one writer at a time")
                cache_writers[id(v)] = node


def _check_loop(node: Node, label: str) -> None:
    body = node.regions[0]
    carried = [v.type for v in node.inputs[1:]]
    if len(body.inputs) != len(carried):
        raise GraphError(f"{label}: body takes {len(body.inputs)} carried value(s), the loop passes {len(carried)}")
    for i, (v, t) in enumerate(zip(body.inputs, carried)):
        if not types_match(v.type, t):
            raise GraphError(f"{label}: body input {i} %{v.name} is {v.type}, the loop carries {t}")
    if len(body.outputs) != 1 + len(carried):
        raise GraphError(f"{label}: body must return (cond, *carried) = {1 + len(carried)} values, "
                         f"found {len(body.outputs)}")
    cond = body.outputs[0].type
    if not (isinstance(cond, TensorType) and cond.dtype == "bool" and cond.shape == ()):
        raise GraphError(f"{label}: body's first output must be a bool scalar condition, found {cond}")
    for i, (v, t) in enumerate(zip(body.outputs[1:], carried)):
        if not types_match(v.type, t):
            raise GraphError(f"{label}: body output {i + 1} %{v.name} is {v.type}, the loop carries {t}")
