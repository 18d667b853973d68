"""Text and DOT renderings of graphs.

Text form (stable; golden files depend on it)::

    graph ar(%prompt: i64[P], %cache: cache, ...) {
      %3: float[P,V], %4: cache = forward(%cache, %prompt, %2) {attention=causal, write=all}  # forward
      ...
      return
    }
"""

from __future__ import annotations

from typing import Any

from graphrt.ir import Graph, Node


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


def to_dot(graph: Graph) -> str:
    """Graphviz DOT source: ops as boxes, values as edges, regions as clusters."""
    lines = [f'digraph "{graph.name}" {{', "  rankdir=TB;", '  node [shape=box, fontname="monospace"];']
    producer: dict[int, str] = {}
    counter = [0]

    def emit_graph(g: Graph, indent: str) -> None:
        for v in g.inputs:
            key = f"in_{counter[0]}"
            counter[0] += 1
            producer[id(v)] = key
            lines.append(f'{indent}{key} [label="%{v.name}\\n{v.type}", shape=ellipse];')
        for node in g.nodes:
            style = ', style=filled, fillcolor="#ffe0b0"' if node.op in ("forward", "emit", "commit") else ""
            lines.append(f'{indent}"{node.name}" [label="{node.op}\\n{node.name}"{style}];')
            for v in node.inputs:
                if id(v) in producer:
                    lines.append(f'{indent}"{producer[id(v)]}" -> "{node.name}" [label="{v.name}"];')
            for i, region in enumerate(node.regions):
                lines.append(f'{indent}subgraph "cluster_{node.name}_{i}" {{')
                lines.append(f'{indent}  label="{node.op} {node.name}"; style=dashed;')
                emit_graph(region, indent + "  ")
                lines.append(f"{indent}}}")
            for v in node.outputs:
                producer[id(v)] = node.name

    emit_graph(graph, "  ")
    lines.append("}")
    return "\n".join(lines)
