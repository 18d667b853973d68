"""Text and DOT renderings of graphs.

The text form is defined beside the IR (:func:`graphrt.ir.format_graph`) and re-exported here. Text form (stable; golden files depend on it)::

    graph ar(%prompt: i64[P], %cache: cache, ...) {
      %3: float[P,V], %4: cache = forward(%cache, %prompt, %2) {attention=causal, write=all}  # forward
      ...
      return
    }
"""

from __future__ import annotations

from graphrt.ir import Graph, Node, format_graph, format_node

__all__ = ["format_graph", "format_node", "to_dot"]


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
