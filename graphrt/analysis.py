"""Graph analyses: op counts, log-prob-only nodes; the dataflow and region captures (defined in :mod:`graphrt.ir`).

Analyses stay near-linear in graph size: they walk nodes and edges once and
never build transitive closures.
"""

from __future__ import annotations

from typing import Any

from graphrt.ir import Graph, Node, Value, dataflow_graph, node_reads, region_reads

__all__ = ["PURE_EFFECTS", "dataflow_graph", "logprob_only_nodes", "node_reads", "region_reads", "summary"]


def summary(graph: Graph) -> dict[str, Any]:
    """Counts of nodes by op (all regions included)."""
    counts: dict[str, int] = {}
    for node in graph.walk():
        counts[node.op] = counts.get(node.op, 0) + 1
    return {"nodes": sum(counts.values()), "ops": dict(sorted(counts.items()))}



PURE_EFFECTS = frozenset({"noise"})
"""Effects a node may have and still be skipped when its results are not needed (noise is counter-based)."""


def logprob_only_nodes(graph: Graph) -> frozenset[str]:
    """Names of the nodes whose results are needed only for ``emit``'s log-probabilities.

    A program whose request asked for no log-probabilities may skip these nodes (and hand
    ``emit`` no log-probs): nothing else reads what they compute. Found as the greatest
    fixpoint over the whole graph, regions included, with a worklist (each value is dropped
    at most once): a value is *log-prob only* when every read of it is ``emit``'s
    ``logprobs`` input, an input of a pure node whose results are all log-prob only, or a
    loop-carried slot (operand, body yield) whose body input and loop result are both
    log-prob only. Top-level outputs and every other read (``forward``, ``commit``, a loop
    condition, ``emit``'s tokens or count) keep a value needed.

    Parameters
    ----------
    graph:
        A verified top-level graph.

    Returns
    -------
    frozenset of str
        The skippable nodes' names (non-control, pure ops only); empty when no ``emit``
        takes log-probabilities.
    """
    from graphrt.registry import get_op

    nodes = list(graph.walk())
    pure = {id(n) for n in nodes if get_op(n.op).tier != "control" and get_op(n.op).effects <= PURE_EFFECTS}
    reads: dict[int, list[tuple[Node | None, int]]] = {}   # value -> (reader, input index); (loop, -j): yield j
    producer: dict[int, Node] = {}
    slot: dict[int, tuple[Node, int]] = {}                  # loop result / body input -> (loop, carried index)
    only: set[int] = set()                                  # candidates: node results and region inputs
    for node in nodes:
        for i, v in enumerate(node.inputs):
            reads.setdefault(id(v), []).append((node, i))
        for v in node.outputs:
            producer[id(v)] = node
            only.add(id(v))
        for region in node.regions:
            only.update(id(v) for v in region.inputs)
            for j, v in enumerate(region.outputs):
                reads.setdefault(id(v), []).append((node, -j) if node.op == "loop" else (None, 0))
        if node.op == "loop":
            body = node.regions[0]
            for k, (out, inp) in enumerate(zip(node.outputs, body.inputs)):
                slot[id(out)] = slot[id(inp)] = (node, k)
    for v in graph.outputs:
        reads.setdefault(id(v), []).append((None, 0))

    def carried_only(loop: Node, k: int) -> bool:
        return id(loop.regions[0].inputs[k]) in only and id(loop.outputs[k]) in only

    def read_ok(node: Node | None, i: int) -> bool:
        if node is None:
            return False
        if node.op == "loop":  # operand i (0: the condition) or, as -j, body output j (0: continue flag)
            k = i - 1 if i > 0 else -i - 1
            return i != 0 and carried_only(node, k)
        if node.op == "emit":
            return i == 2
        return id(node) in pure and all(id(o) in only for o in node.outputs)

    work = list(only)
    while work:
        vid = work.pop()
        if vid not in only or all(read_ok(*r) for r in reads.get(vid, ())):
            continue
        only.discard(vid)  # needed: what made it look skippable must be checked again
        node = producer.get(vid)
        if node is not None and id(node) in pure:
            work.extend(id(v) for v in node.inputs)
        if vid in slot:
            loop, k = slot[vid]
            work += [id(loop.inputs[k + 1]), id(loop.regions[0].outputs[k + 1])]
    if not any(n.op == "emit" and len(n.inputs) > 2 and id(n.inputs[2]) in only for n in nodes):
        return frozenset()
    return frozenset(n.name for n in nodes if id(n) in pure and n.outputs and all(id(o) in only for o in n.outputs))
