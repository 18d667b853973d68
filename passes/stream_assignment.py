"""Stream assignment: independent nodes onto separate streams, with the events they need.

Per region (the top level and each loop body, whose schedule serves every
iteration), the dependencies are

* dataflow, from ``graph.to_networkx()`` (a region's captures count as reads by
  its owner node);
* program order among *ordered* nodes (``forward``, ``commit``, ``emit``, loops
  holding them): their relative order is observable;
* *pins* for pure ops that may raise (``gather``, ``slice``, ...): they stay
  between the ordered nodes around them, so an error is never moved across an
  ``emit`` that might end the program;
* the memory plan's anti-dependences (a buffer is reused only after every
  reader of its previous value).

Ordered nodes, loops and other control ops run on stream 0 (the host's stream). Walking the region in
program order (a topological order of those dependencies), a node continues
the stream of a predecessor that is still that stream's last node, else opens
a new stream (at most ``max_streams``; past that it follows its latest
predecessor). A cross-stream dependency becomes an event (``record`` after the
producer, ``wait`` before the consumer) unless it is already implied: each
stream carries a vector clock of what it has waited for, so the check is
O(streams) per edge -- no transitive closure; the pass stays linear.

The executor honours the schedule for CUDA tensors (torch streams and events,
fork at region entry, join at host syncs and region exit); on CPU it runs the
nodes in program order, which is one of the orders the schedule allows.

Before / after: the graph is unchanged; ``graph.annotations["streams"]`` holds
a :class:`StreamSchedule`, e.g. for the AR step::

    s0: forward.51 ban.56 sample.0 where.96 emit.110 not.112
    s1: add.60 eq.94                      (the next step's position, early)
    s2: clean.62 log_softmax.102 gather.104 (waits ban.56, where.96)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from graphrt.ir import Graph, Node
from graphrt.passes.effects import is_ordered, is_total
from graphrt.passes.graph_utils import copy_graph, regions_with_keys
from graphrt.passes.manager import PassResult
from graphrt.registry import get_op

MAX_STREAMS = 4


@dataclass
class RegionSchedule:
    """The schedule of one region.

    Attributes
    ----------
    key:
        Region key (``""`` top level, else the owning loop node's name).
    order:
        Node names in issue order (program order).
    stream:
        Node name -> stream index (0 is the host's stream).
    waits:
        Node name -> producers on other streams whose events it waits for.
    deps:
        Node name -> every node it depends on (data, effect order, pins, anti-deps).
    """

    key: str
    order: list[str] = field(default_factory=list)
    stream: dict[str, int] = field(default_factory=dict)
    waits: dict[str, list[str]] = field(default_factory=dict)
    deps: dict[str, list[str]] = field(default_factory=dict)

    @property
    def num_streams(self) -> int:
        """Streams used by this region."""
        return 1 + max(self.stream.values(), default=0)

    @property
    def records(self) -> set[str]:
        """Nodes that record an event (someone waits for them)."""
        return {p for ps in self.waits.values() for p in ps}

    def constraints(self) -> Iterator[tuple[str, str]]:
        """Every ``(before, after)`` pair the schedule guarantees directly: stream order and waits.

        Any execution order that respects these runs the region correctly.
        """
        last: dict[int, str] = {}
        for name in self.order:
            s = self.stream[name]
            if s in last:
                yield last[s], name
            last[s] = name
            for p in self.waits.get(name, ()):
                yield p, name

    def format(self) -> str:
        """One line per stream, then the waits (stable: golden files use it)."""
        lines = []
        for s in range(self.num_streams):
            lines.append(f"  s{s}: " + " ".join(n for n in self.order if self.stream[n] == s))
        for name in self.order:
            if self.waits.get(name):
                lines.append(f"  {name} waits " + ", ".join(self.waits[name]))
        return "\n".join(lines)


@dataclass
class StreamSchedule:
    """Streams and events for every region of a graph (``graph.annotations["streams"]``)."""

    regions: dict[str, RegionSchedule] = field(default_factory=dict)
    max_streams: int = MAX_STREAMS

    @property
    def num_streams(self) -> int:
        """Most streams any region uses."""
        return max((r.num_streams for r in self.regions.values()), default=1)

    @property
    def num_events(self) -> int:
        """Events recorded over all regions."""
        return sum(len(r.records) for r in self.regions.values())

    def format(self) -> str:
        """All regions' schedules as text."""
        return "\n".join(f"region {key or '<top>'}:\n{r.format()}" for key, r in self.regions.items())


def assign_streams(graph: Graph, max_streams: int = MAX_STREAMS) -> PassResult:
    """Schedule ``graph``'s nodes onto streams with events (see the module docstring).

    Parameters
    ----------
    graph:
        A verified graph (with a memory plan when buffers are shared: its
        anti-dependences are respected); not modified.
    max_streams:
        Streams per region, stream 0 included (>= 1).

    Returns
    -------
    PassResult
        The graph with ``graph.annotations["streams"]``; ``info`` gives the most
        streams a region uses and the number of events.

    Raises
    ------
    ValueError
        ``max_streams < 1``.
    """
    if max_streams < 1:
        raise ValueError(f"assign_streams: max_streams expected >= 1, found {max_streams}")
    out = copy_graph(graph)
    plan = out.annotations.get("memory")
    anti: dict[str, list[tuple[str, str]]] = {}
    for key, reader, writer in getattr(plan, "anti_deps", ()):
        anti.setdefault(key, []).append((reader, writer))
    sched = StreamSchedule(max_streams=max_streams)
    for key, region in regions_with_keys(out):
        sched.regions[key] = schedule_region(region, key, anti.get(key, []), max_streams)
    out.annotations["streams"] = sched
    return PassResult(out, True, {"streams": sched.num_streams, "events": sched.num_events})


def region_dependencies(region: Graph, anti_deps: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Node name -> the nodes of ``region`` it must follow (see the module docstring).

    Parameters
    ----------
    region:
        One graph or region (its own nodes; captures count as reads by their owner).
    anti_deps:
        ``(reader, writer)`` pairs of this region from the memory plan.

    Returns
    -------
    dict[str, list[str]]
        Every edge points forward in program order.
    """
    dg = region.to_networkx()
    deps: dict[str, set[str]] = {n.name: set() for n in region.nodes}
    for u, v in dg.edges():
        if u in deps and v in deps:
            deps[v].add(u)
    last_ordered: str | None = None
    pending: list[str] = []  # raising pure ops since the last ordered node
    for node in region.nodes:
        if is_ordered(node):
            if last_ordered is not None:
                deps[node.name].add(last_ordered)
            deps[node.name].update(pending)
            last_ordered, pending = node.name, []
        elif not is_total(node):
            if last_ordered is not None:
                deps[node.name].add(last_ordered)
            pending.append(node.name)
    for reader, writer in anti_deps:
        if reader != writer and reader in deps and writer in deps:
            deps[writer].add(reader)
    return {name: sorted(d) for name, d in deps.items()}


def schedule_region(region: Graph, key: str, anti_deps: list[tuple[str, str]], max_streams: int) -> RegionSchedule:
    """Assign streams and events for one region (linear in nodes + edges, times streams).

    Parameters
    ----------
    region:
        One graph or region.
    key:
        Its region key.
    anti_deps:
        ``(reader, writer)`` pairs of this region from the memory plan.
    max_streams:
        Streams available, stream 0 included.

    Returns
    -------
    RegionSchedule
    """
    deps = region_dependencies(region, anti_deps)
    index = {n.name: i for i, n in enumerate(region.nodes)}
    sched = RegionSchedule(key, [n.name for n in region.nodes], {}, {}, deps)
    tail: dict[int, str] = {}                  # stream -> its last node
    clock: dict[int, list[int]] = {}           # stream -> vector clock at its tail
    pos: dict[str, int] = {}                   # node -> position in its stream (1-based)
    vc: dict[str, list[int]] = {}              # node -> what is known complete when it completes
    for node in region.nodes:
        preds = sorted(deps[node.name], key=index.__getitem__)
        s = _choose_stream(node, preds, sched.stream, tail, max_streams)
        c = list(clock.get(s, [0] * max_streams))
        waits = []
        for p in preds:
            t = sched.stream[p]
            if t != s and c[t] < pos[p]:  # not implied by stream order or earlier waits
                waits.append(p)
                c = [max(a, b) for a, b in zip(c, vc[p])]
        c[s] += 1
        pos[node.name] = c[s]
        sched.stream[node.name] = s
        if waits:
            sched.waits[node.name] = waits
        vc[node.name], clock[s], tail[s] = c, c, node.name
    return sched


def _choose_stream(node: Node, preds: list[str], stream: dict[str, int], tail: dict[int, str],
                   max_streams: int) -> int:
    if is_ordered(node) or node.regions or get_op(node.op).tier == "control":
        return 0  # the host runs these (after joining every stream): they live on the host's stream
    for p in reversed(preds):  # continue the chain of the latest predecessor that ends a stream
        if tail.get(stream[p]) == p:
            return stream[p]
    if not tail:
        return 0
    if len(tail) < max_streams:
        return next(s for s in range(max_streams) if s not in tail)
    return stream[preds[-1]] if preds else 0
