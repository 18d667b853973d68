"""Helpers every pass shares: a fast structural copy, region walks, substitutions.

Passes are pure functions: each copies its input with :func:`copy_graph` (same
names, new objects, annotations carried over; ``rewrite_pass`` does this),
rewrites the copy, and returns it. Rewrites that replace a value by another
record the replacement in a :class:`Substitution` and apply all of them in one
walk at the end, so a pass stays linear in graph size.
"""

from __future__ import annotations

from typing import Any, Iterator

from graphrt.ir import Graph, Node, Value

def copy_graph(graph: Graph) -> Graph:
    """Structural copy of ``graph``: same names, types and attributes, new objects.

    Values read from outside ``graph`` (none in a verified top-level graph) are
    shared with the original. Annotations are carried over (shallow copy).

    Parameters
    ----------
    graph:
        The graph to copy.

    Returns
    -------
    Graph
        The copy; ``verify`` accepts it exactly when it accepts ``graph``.
    """
    vmap: dict[int, Value] = {}

    def value(v: Value, producer: Node | None) -> Value:
        nv = Value(v.name, v.type, producer)
        vmap[id(v)] = nv
        return nv

    def copy(g: Graph) -> Graph:
        ng = Graph(g.name)
        ng.inputs = [value(v, None) for v in g.inputs]
        for n in g.nodes:
            nn = Node(n.op, [vmap.get(id(v), v) for v in n.inputs], [], dict(n.attrs), [], n.name)
            nn.regions = [copy(r) for r in n.regions]
            nn.outputs = [value(v, nn) for v in n.outputs]
            ng.nodes.append(nn)
        ng.outputs = [vmap.get(id(v), v) for v in g.outputs]
        return ng

    out = copy(graph)
    out.annotations = dict(graph.annotations)
    return out


def all_graphs(graph: Graph) -> Iterator[Graph]:
    """``graph`` and every nested region, pre-order.

    Parameters
    ----------
    graph:
        A graph.

    Yields
    ------
    Graph
        ``graph`` first, then each region (depth first).
    """
    yield graph
    for node in graph.nodes:
        for region in node.regions:
            yield from all_graphs(region)


def regions_with_keys(graph: Graph) -> Iterator[tuple[str, Graph]]:
    """Every (key, graph) pair: the top level as ``""``, each region by its owner node's name.

    Node names are unique in a verified graph, so keys are too (a second region
    of the same node gets ``#1``, ``#2``, ...). Plans and schedules use these keys.

    Parameters
    ----------
    graph:
        A top-level graph.

    Yields
    ------
    tuple[str, Graph]
        The key and the graph/region.
    """
    yield "", graph
    for node in graph.walk():
        for i, region in enumerate(node.regions):
            yield (node.name if i == 0 else f"{node.name}#{i}"), region


class Substitution:
    """Pending replacements ``old value -> new value``, applied in one walk.

    Old values are kept referenced until :meth:`apply`, so their ids stay unique.
    """

    def __init__(self) -> None:
        self._map: dict[int, tuple[Value, Value]] = {}

    def __bool__(self) -> bool:
        return bool(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def replace(self, old: Value, new: Value) -> None:
        """Record that every read of ``old`` must read ``new`` instead."""
        if old is not new:
            self._map[id(old)] = (old, new)

    def resolve(self, v: Value) -> Value:
        """The value ``v`` stands for after all recorded replacements (chains followed)."""
        seen = 0
        while id(v) in self._map:
            v = self._map[id(v)][1]
            seen += 1
            if seen > len(self._map):
                raise RuntimeError(f"substitution cycle through %{v.name}")
        return v

    def resolve_inputs(self, node: Node) -> None:
        """Rewrite ``node.inputs`` in place through :meth:`resolve`."""
        if self._map:
            node.inputs = [self.resolve(v) for v in node.inputs]

    def apply(self, graph: Graph) -> None:
        """Rewrite every read in ``graph`` (all regions, outputs included)."""
        if not self._map:
            return
        for g in all_graphs(graph):
            for node in g.nodes:
                self.resolve_inputs(node)
            g.outputs = [self.resolve(v) for v in g.outputs]


class Rewriter:
    """A walk over a graph's nodes in order, each read through the substitutions recorded so far.

    Subclasses decide per node in :meth:`keep`: rewrite it in place, record that
    its results stand for other values (``self.subst.replace``) and drop it, and
    walk its regions with :meth:`walk` where they want (before or after their
    own decision), counting what they do in ``self.counts`` (keys
    :attr:`COUNTS`). Dropped nodes are unlinked from their inputs' users.
    """

    COUNTS: tuple[str, ...] = ()
    """The change log's keys."""

    def __init__(self) -> None:
        self.subst = Substitution()
        self.counts = dict.fromkeys(self.COUNTS, 0)

    def run(self, graph: Graph) -> dict[str, int]:
        """Walk ``graph`` (a top-level graph, rewritten in place), apply every substitution to it.

        Returns the change log: ``self.counts``, or ``{}`` when nothing changed.
        """
        self.walk(graph)
        self.subst.apply(graph)
        return dict(self.counts) if any(self.counts.values()) else {}

    def walk(self, graph: Graph) -> None:
        """Visit the nodes of ``graph`` (a graph or a region) in order; keep those :meth:`keep` keeps."""
        kept: list[Node] = []
        for node in graph.nodes:
            self.subst.resolve_inputs(node)
            if self.keep(node):
                kept.append(node)
            else:
                node.unlink()
        graph.nodes = kept
        graph.outputs = [self.subst.resolve(v) for v in graph.outputs]

    def keep(self, node: Node) -> bool:
        """Whether ``node`` stays (after any rewrite); ``False`` drops it. Subclasses decide."""
        raise NotImplementedError


def freeze_attr(v: Any) -> Any:
    """A hashable key for an attribute value that tells ``1``, ``1.0``, ``True`` and ``nan`` apart safely.

    Parameters
    ----------
    v:
        An attribute value (scalars, strings, None, lists/tuples/dicts of them).

    Returns
    -------
    Any
        A hashable, type-tagged key.
    """
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, tuple(freeze_attr(x) for x in v))
    if isinstance(v, dict):
        return ("dict", tuple(sorted((k, freeze_attr(x)) for k, x in v.items())))
    return (type(v).__name__, repr(v))
