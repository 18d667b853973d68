"""Capture planning: maximal static segments between host synchronisations.

A CUDA graph can replay a run of device work whose shapes and buffer addresses
do not change and during which the host needs to see nothing. Per region (a
loop body's plan serves every iteration) the pass walks the nodes in program
order and cuts at every host synchronisation:

* ``forward`` (the program suspends and hands the backbone a request),
  ``emit`` (tokens go to the caller, who answers whether to stop) and
  ``commit`` (the caller crops the cache): the program yields to the host;
* a ``loop``: its condition is read on the host before every iteration (and
  once more when it fails);
* a primitive that reads a computed value on the host (``topk`` with a
  computed ``k``, ``scatter`` at a computed index, ...; see
  :data:`graphrt.passes.effects.HOST_READS`). Reads of request parameters
  (graph inputs) and constants are listed as ``param-read``: they are known
  when the request is admitted and do not cut a segment.

The runs in between are the segments. A segment is *capturable* when every
value it defines has a planned static buffer (or is a static-shape view) --
so it needs the memory plan -- else it says why not (a dynamic shape such as
the prompt's ``P``, an unplanned value).

Before / after: the graph is unchanged; ``graph.annotations["capture"]``
holds a :class:`CapturePlan`, e.g. for the AR step::

    segment decode[0]  capturable  unsqueeze.47 unsqueeze.49
    sync    decode     forward     forward.51
    segment decode[1]  capturable  ban.56 add.60 clean.62 sample.0 ... unsqueeze.106
    sync    decode     emit        emit.110
    segment decode[2]  capturable  not.112
"""

from __future__ import annotations

from dataclasses import dataclass, field

from graphrt.ir import Graph, Node
from graphrt.passes.effects import HOST_READS, VIEW_OPS
from graphrt.passes.graph_utils import copy_graph, regions_with_keys
from graphrt.passes.manager import PassResult
from graphrt.registry import get_op
from graphrt.types import TensorType

SYNC_KINDS = ("forward", "emit", "commit", "loop-condition", "host-read")
"""Kinds of host synchronisation, in report order (``param-read`` is listed apart: not a sync)."""


@dataclass(frozen=True)
class Sync:
    """One host synchronisation (per run of its region; a loop's per condition check)."""

    region: str
    node: str
    kind: str
    detail: str = ""


@dataclass(frozen=True)
class Segment:
    """A maximal run of device work between two syncs of one region."""

    region: str
    index: int
    nodes: tuple[str, ...]
    capturable: bool
    reason: str = ""


@dataclass
class CapturePlan:
    """Segments and syncs of every region (``graph.annotations["capture"]``)."""

    segments: list[Segment] = field(default_factory=list)
    syncs: list[Sync] = field(default_factory=list)
    param_reads: list[Sync] = field(default_factory=list)

    def syncs_per_run(self, region: str) -> dict[str, int]:
        """Host syncs one run of ``region`` performs, by kind.

        A loop node counts one condition check here (its last, failing one); each
        run of its body adds one more, which callers counting runs add themselves.

        Parameters
        ----------
        region:
            Region key (``""`` for the top level, else the owning loop node's name).

        Returns
        -------
        dict[str, int]
            Kind (:data:`SYNC_KINDS`) -> count.
        """
        out = {k: 0 for k in SYNC_KINDS}
        for s in self.syncs:
            if s.region == region:
                out[s.kind] += 1
        return out

    def format(self) -> str:
        """Segments and syncs in program order (stable: golden files use it)."""
        lines = []
        for seg in self.segments:
            mark = "capturable" if seg.capturable else f"not capturable ({seg.reason})"
            lines.append(f"  segment {seg.region or '<top>'}[{seg.index}] {mark}: {len(seg.nodes)} nodes")
        for s in self.syncs:
            lines.append(f"  sync {s.region or '<top>'} {s.kind} {s.node}" + (f" ({s.detail})" if s.detail else ""))
        captured = sum(len(s.nodes) for s in self.segments if s.capturable)
        total = sum(len(s.nodes) for s in self.segments)
        lines.append(f"  {len(self.segments)} segments ({sum(s.capturable for s in self.segments)} capturable, "
                     f"{captured}/{total} device nodes), {len(self.syncs)} syncs, "
                     f"{len(self.param_reads)} parameter reads")
        return "\n".join(lines)


def plan_capture(graph: Graph) -> PassResult:
    """Cut every region into static segments at host syncs (see the module docstring).

    Parameters
    ----------
    graph:
        A verified graph, best with a memory plan (without one no segment is capturable).

    Returns
    -------
    PassResult
        The graph with ``graph.annotations["capture"]``; ``info`` counts
        segments, capturable segments and syncs.
    """
    out = copy_graph(graph)
    plan = out.annotations.get("memory")
    planned = set(plan.slot_of) if plan is not None else set()
    inputs = {id(v) for v in out.inputs}
    consts = {id(n.outputs[0]) for n in out.walk() if n.op == "constant"}
    cap = CapturePlan()
    for key, region in regions_with_keys(out):
        _plan_region(region, key, planned, inputs | consts, cap)
    out.annotations["capture"] = cap
    info = {"segments": len(cap.segments), "capturable": sum(s.capturable for s in cap.segments),
            "syncs": len(cap.syncs)}
    return PassResult(out, True, info)


def _sync_kind(node: Node, host_known: set[int]) -> tuple[str, str] | None:
    if node.op in ("forward", "emit", "commit"):
        return node.op, ""
    if node.op == "loop" or node.regions:
        return "loop-condition", ""
    effects = get_op(node.op).effects
    if "host_sync" in effects or "emits" in effects:
        return "host-read", f"op '{node.op}' syncs the host"
    computed = [node.inputs[i] for i in HOST_READS.get(node.op, ()) if i < len(node.inputs)
                and id(node.inputs[i]) not in host_known]
    if computed:
        return "host-read", "reads " + ", ".join(
            f"%{v.name}" + (f" of {v.producer.name}" if v.producer is not None else "") for v in computed)
    return None


def _plan_region(region: Graph, key: str, planned: set[str], host_known: set[int], cap: CapturePlan) -> None:
    current: list[Node] = []

    def close() -> None:
        if current:
            cap.segments.append(_segment(key, sum(s.region == key for s in cap.segments), current, planned))
            current.clear()

    for node in region.nodes:
        kind = _sync_kind(node, host_known)
        if kind is None:
            reads = [node.inputs[i].name for i in HOST_READS.get(node.op, ()) if i < len(node.inputs)]
            if reads:
                cap.param_reads.append(Sync(key, node.name, "param-read", ", ".join(f"%{n}" for n in reads)))
            current.append(node)
            continue
        close()
        cap.syncs.append(Sync(key, node.name, *kind))
    close()


def _segment(key: str, index: int, nodes: list[Node], planned: set[str]) -> Segment:
    reason = ""
    for node in nodes:
        for v in node.outputs:
            t = v.type
            static = isinstance(t, TensorType) and all(isinstance(d, int) or d == "V" for d in t.shape)
            if node.op in VIEW_OPS and static:
                continue
            if v.name not in planned:
                reason = f"%{v.name}: {t} of {node.name} " + ("has a dynamic shape" if not static else "is unplanned")
                break
        if reason:
            break
    return Segment(key, index, tuple(n.name for n in nodes), not reason, reason)
