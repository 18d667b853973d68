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
from graphrt.passes.graph_utils import Rewriter, freeze_attr
from graphrt.passes.manager import rewrite_pass


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


class _Merger(Rewriter):
    """Scopes follow regions: a table of pure nodes per enclosing graph, innermost last."""

    COUNTS = ("merged",)

    def __init__(self) -> None:
        super().__init__()
        self.scopes: list[dict[tuple[Any, ...], Node]] = [{}]

    def keep(self, node: Node) -> bool:
        for region in node.regions:
            self.scopes.append({})
            self.walk(region)
            self.scopes.pop()
        if not is_pure(node):
            return True
        key = node_key(node)
        hit = None
        for table in reversed(self.scopes):
            hit = table.get(key)
            if hit is not None:
                break
        if hit is None:
            self.scopes[-1][key] = node
            return True
        for old, new in zip(node.outputs, hit.outputs):
            self.subst.replace(old, new)
        self.counts["merged"] += 1
        return False


@rewrite_pass('``info["merged"]`` counts dropped nodes')
def eliminate_common_subexpressions(graph: Graph) -> dict[str, int]:
    """Merge duplicate pure nodes, scope by scope (see the module docstring)."""
    return _Merger().run(graph)
