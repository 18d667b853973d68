"""Common-subexpression elimination over scopes.

Two pure nodes with the same op, the same inputs (after earlier merges) and
the same attributes compute the same value, so the later one is dropped and
its readers read the earlier one. Scopes follow regions: a node in a loop body
may reuse a value of an enclosing graph (visible there), never one of a
sibling region or of the body from outside. Nodes with effects (``forward``,
``commit``, ``emit``) and loops are never merged; ``noise`` is (it is a pure
function of seed, stream, positions and purpose).

Before / after::

    %31: float[V] = clean(%6)                 %31: float[V] = clean(%6)
    %32: float[V] = log_softmax(%31)    ->    %32: float[V] = log_softmax(%31)
    %40: float[V] = clean(%6)                 %41: float[V] = softmax(%31)
    %41: float[V] = softmax(%40)
"""

from __future__ import annotations

from typing import Any

from graphrt.ir import Graph, Node
from graphrt.passes.effects import is_pure
from graphrt.passes.graph_utils import Substitution, freeze_attr
from graphrt.passes.manager import rewrite_pass


@rewrite_pass('``info["merged"]`` counts dropped nodes')
def eliminate_common_subexpressions(graph: Graph) -> dict[str, int]:
    """Merge duplicate pure nodes, scope by scope (see the module docstring)."""
    subst = Substitution()
    merged = _walk(graph, [{}], subst)
    subst.apply(graph)
    return {"merged": merged} if merged else {}


def node_key(node: Node) -> tuple[Any, ...]:
    """What makes two pure nodes interchangeable: op, input identities, attributes, output types.

    Parameters
    ----------
    node:
        A pure node whose inputs are already resolved through earlier merges.

    Returns
    -------
    tuple
        Hashable; equal keys mean equal results.
    """
    attrs = tuple(sorted((k, freeze_attr(v)) for k, v in node.attrs.items()))
    return (node.op, tuple(id(v) for v in node.inputs), attrs, tuple(str(v.type) for v in node.outputs))


def _lookup(scopes: list[dict[tuple[Any, ...], Node]], key: tuple[Any, ...]) -> Node | None:
    for table in reversed(scopes):
        hit = table.get(key)
        if hit is not None:
            return hit
    return None


def _walk(graph: Graph, scopes: list[dict[tuple[Any, ...], Node]], subst: Substitution) -> int:
    merged = 0
    kept: list[Node] = []
    for node in graph.nodes:
        subst.resolve_inputs(node)
        for region in node.regions:
            scopes.append({})
            merged += _walk(region, scopes, subst)
            scopes.pop()
        if is_pure(node):
            key = node_key(node)
            hit = _lookup(scopes, key)
            if hit is not None:
                for old, new in zip(node.outputs, hit.outputs):
                    subst.replace(old, new)
                merged += 1
                node.unlink()
                continue
            scopes[-1][key] = node
        kept.append(node)
    graph.nodes = kept
    graph.outputs = [subst.resolve(v) for v in graph.outputs]
    return merged
