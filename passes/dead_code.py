"""Dead-code elimination, effects respected, and dead loop-carried values.

:func:`eliminate_dead_code` drops every node whose results nobody reads,
except nodes with side effects (``forward``, ``commit``, ``emit``, anything
that writes the cache, syncs the host or emits) and loops whose bodies hold
such a node; inside a kept loop it cleans the body the same way. ``noise`` is
pure, so the Gumbel noise of a fused ``sample`` disappears with it.

:func:`remove_dead_carried` drops loop-carried values that influence nothing:
neither the loop's results read after it, nor the condition, nor an effect,
nor another live carried value (a fixpoint over the body's dataflow).

Before / after (``eliminate_dead_code``)::

    %20: float[V] = noise(%seed, %stream, %0, %19)      %29: i64 = sample(%6, %0, ...)
    %29: i64 = sample(%6, %0, ...)                 ->   %39: bool = emit(...)
    %39: bool = emit(...)

Before / after (``remove_dead_carried``)::

    %b, %s = loop(%c, %b0, %zero)                       %b = loop(%c, %b0)
      region body(%b.1, %s.1) {                    ->     region body(%b.1) {
        ...; %s2 = add(%s.1, %one)                          ...
        yield %cond, %b2, %s2                               yield %cond, %b2
"""

from __future__ import annotations

from graphrt.analysis import region_reads
from graphrt.ir import Graph, Node, Value
from graphrt.passes.effects import has_side_effects
from graphrt.passes.graph_utils import all_graphs
from graphrt.passes.manager import rewrite_pass


@rewrite_pass('``info["removed"]`` counts removed nodes (nested ones included)')
def eliminate_dead_code(graph: Graph) -> dict[str, int]:
    """Remove unused nodes without effects (see the module docstring)."""
    removed, _ = _sweep(graph)
    return {"removed": removed} if removed else {}


def _sweep(region: Graph) -> tuple[int, set[int]]:
    """Remove dead nodes of ``region``; returns (removed count, ids of values read from outside)."""
    live = {id(v) for v in region.outputs}
    defined = {id(v) for v in region.inputs}
    removed = 0
    kept: list[Node] = []
    for node in reversed(region.nodes):
        if not has_side_effects(node) and not any(id(v) in live for v in node.outputs):
            removed += 1 + sum(1 for r in node.regions for _ in r.walk())
            node.unlink()
            continue
        for body in node.regions:
            n, reads = _sweep(body)
            removed += n
            live |= reads
        live.update(id(v) for v in node.inputs)
        defined.update(id(v) for v in node.outputs)
        kept.append(node)
    kept.reverse()
    region.nodes = kept
    return removed, live - defined


@rewrite_pass('``info["carried_removed"]`` counts dropped values')
def remove_dead_carried(graph: Graph) -> dict[str, int]:
    """Drop loop-carried values that influence nothing (see the module docstring)."""
    total = 0
    while True:  # removing one loop's carried input can free another loop's result
        regions = list(all_graphs(graph))
        yielded = {id(v) for g in regions for v in g.outputs}  # read as graph or region results
        n = sum(_narrow(node, yielded) for g in regions for node in g.nodes if node.op == "loop")
        if not n:
            break
        total += n
    return {"carried_removed": total} if total else {}


def _narrow(loop: Node, yielded: set[int]) -> int:
    """Drop ``loop``'s carried values that nothing needs; ``yielded`` holds ids of values read as results."""
    body = loop.regions[0]
    live_idx = {i for i, o in enumerate(loop.outputs) if o.users or id(o) in yielded}
    while True:
        roots = [body.outputs[0]] + [body.outputs[1 + i] for i in sorted(live_idx)]
        live = _live_values(body, roots)
        new = {i for i, u in enumerate(body.inputs) if id(u) in live}
        if new <= live_idx:
            break
        live_idx |= new
    dead = [i for i in range(len(body.inputs)) if i not in live_idx]
    if not dead:
        return 0
    keep = [i for i in range(len(body.inputs)) if i in live_idx]
    loop.inputs = [loop.inputs[0]] + [loop.inputs[1 + i] for i in keep]
    loop.outputs = [loop.outputs[i] for i in keep]
    body.inputs = [body.inputs[i] for i in keep]
    body.outputs = [body.outputs[0]] + [body.outputs[1 + i] for i in keep]
    _sweep(body)  # the nodes that computed the dropped values read dropped inputs: remove them now
    return len(dead)


def _live_values(region: Graph, roots: list[Value]) -> set[int]:
    """Ids of values ``region`` needs to produce ``roots`` and its effects (captures included)."""
    live = {id(v) for v in roots}
    for node in reversed(region.nodes):
        if not has_side_effects(node) and not any(id(v) in live for v in node.outputs):
            continue
        live.update(id(v) for v in node.inputs)
        if node.regions:
            live.update(id(v) for v in region_reads(node))
    return live
