"""Loop-invariant code motion: compute once what every iteration recomputes.

A node of a loop body is invariant when it reads nothing defined in the body
(no carried value, no body result) -- the per-iteration constants, the
temperature arithmetic of every ``sample_tokens`` chain. Invariant nodes that
are *total* (cannot raise; see :mod:`graphrt.passes.effects`) move just before
the loop; they may then run although the loop does not iterate, which is why
ops that could raise stay put. Inner loops are processed first, so a node
leaves every loop it is invariant to.

Before / after::

    %l = loop(%c, %x)                           %k: float = constant() {value=1e-30}
      region body(%x.1) {                       %m: float = maximum(%temperature, %k)
        %k: float = constant() {value=1e-30}    %l = loop(%c, %x)
        %m: float = maximum(%temperature, %k)     region body(%x.1) {
        %y = div(%x.1, %m)               ->         %y = div(%x.1, %m)
        yield ...                                   yield ...
"""

from __future__ import annotations

from graphrt.ir import Graph, Node
from graphrt.passes.effects import is_total
from graphrt.passes.manager import rewrite_pass


@rewrite_pass('``info["hoisted"]`` counts moves')
def hoist_invariants(graph: Graph) -> dict[str, int]:
    """Move loop-invariant total nodes out of loop bodies (see the module docstring)."""
    moved = _process(graph)
    return {"hoisted": moved} if moved else {}


def _process(region: Graph) -> int:
    moved = 0
    nodes: list[Node] = []
    for node in region.nodes:
        for body in node.regions:
            moved += _process(body)
            hoisted = _extract_invariants(body)
            nodes.extend(hoisted)
            moved += len(hoisted)
        nodes.append(node)
    region.nodes = nodes
    return moved


def _extract_invariants(body: Graph) -> list[Node]:
    """Remove and return (in order) the invariant total nodes of ``body``."""
    inner = {id(v) for v in body.inputs}
    kept: list[Node] = []
    hoisted: list[Node] = []
    for node in body.nodes:
        if is_total(node) and all(id(v) not in inner for v in node.inputs):
            hoisted.append(node)
        else:
            kept.append(node)
            inner.update(id(v) for v in node.outputs)
    body.nodes = kept
    return hoisted
