"""Graph analyses on networkx: dataflow, region captures, op counts.

Analyses stay near-linear in graph size: they walk nodes and edges once and
never build transitive closures.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from graphrt.ir import Graph, Node, Value


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


def dataflow_graph(graph: Graph) -> nx.DiGraph:
    """``networkx.DiGraph`` of ``graph``'s own nodes (see :meth:`Graph.to_networkx`)."""
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


def summary(graph: Graph) -> dict[str, Any]:
    """Counts of nodes by op (all regions included)."""
    counts: dict[str, int] = {}
    for node in graph.walk():
        counts[node.op] = counts.get(node.op, 0) + 1
    return {"nodes": sum(counts.values()), "ops": dict(sorted(counts.items()))}
