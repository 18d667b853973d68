"""Memory planning: static buffers for every tensor whose shape is known at compile time.

A value is *planned* when a non-control, non-view node defines it and every
dimension of its type is static: an int, or a model dimension such as ``V``
(fixed once a model is chosen). Planned values get a buffer slot; the executor
(:mod:`graphrt.executor`) allocates each slot once per request, on first use,
and from then on every planned node writes into its slot: through the op's
out-variant (:mod:`graphrt.out_variants`) when it has one, else by a
``copy_`` of the reference's result. So in steady state a decode step
allocates no new tensor for a planned value.

Reuse, region by region (a loop body's buffers serve every iteration):

* **shared** slots: values of one (dtype, shape) whose lifetimes do not
  overlap share a buffer (linear scan; a buffer freed by the last read at
  node i serves a value defined at a node after i);
* **carried** slots: a value a loop body yields as carried value k keeps its
  own buffer, which the next iteration reads as the body input k. Planned only
  when that input is dead before the value is written (or read by the very node
  that writes it: then the node computes first and copies, never ``out=``
  into its own input), and when neither aliases another yield;
* **once** slots: ``constant`` and ``fill`` are computed once per request;
* **dedicated** slots: other values that leave their region.

Aliasing is tracked through unplanned views (``slice``, ``unsqueeze``, ...)
and loop results (which may be the carried inputs when a loop does not
iterate): a buffer lives as long as anything that may alias it. Every buffer
reuse is also recorded as an anti-dependence (``readers of the old value ->
writer of the new one``) for the stream scheduler.

Before / after: the graph is unchanged; ``graph.annotations["memory"]`` holds a
:class:`MemoryPlan`, e.g. for the AR step region::

    slot 3  float[V]   carried?  no   shared by %57 (ban), %103 (log_softmax)
    slot 4  i64        carried   yes  %97  (next token, read as %32.45 next step)
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Mapping

from graphrt.ir import Graph, Node, Value
from graphrt.passes.effects import VIEW_OPS
from graphrt.passes.graph_utils import copy_graph
from graphrt.passes.manager import PassResult
from graphrt.registry import get_op
from graphrt.types import Dim, TensorType

MODEL_DIMS = ("V",)
"""Symbolic dimensions fixed by the model (vocabulary); every other symbol is dynamic."""

ITEMSIZE = {"i64": 8, "bool": 1, "float": 8}
"""Bytes per element by IR dtype (``float`` counted as float64, the widest the executor keeps)."""

ONCE_OPS = frozenset({"constant", "fill"})


@dataclass(frozen=True)
class BufferSlot:
    """One planned buffer.

    Attributes
    ----------
    index:
        Slot number (the executor's arena key).
    region:
        Key of the region whose nodes write it: ``""`` for the top level, else
        the name of the loop node that owns it.
    dtype, shape:
        IR dtype and static shape (ints and model dims).
    values:
        Names of the values stored in it, in program order.
    kind:
        ``shared``, ``carried``, ``once`` or ``dedicated`` (see the module docstring).
    """

    index: int
    region: str
    dtype: str
    shape: tuple[Dim, ...]
    values: tuple[str, ...]
    kind: str


@dataclass
class MemoryPlan:
    """The buffers of a graph and which value lives where.

    Attributes
    ----------
    slots:
        Every buffer.
    slot_of:
        Value name -> slot index.
    mode:
        Value name -> ``out`` (write through an out-variant when the executor has
        one, else compute and copy), ``copy`` (always compute, then copy: the node
        reads the buffer it writes) or ``once`` (computed on first use only).
    unplanned:
        Value name -> why it has no buffer (dynamic shape, a view, a control op's
        result, a loop-carried hazard).
    anti_deps:
        ``(region key, reader node, writer node)``: the writer reuses a buffer the
        reader reads, so it must run after it (for the stream scheduler).
    model_dims:
        Symbols treated as static.
    """

    slots: list[BufferSlot] = field(default_factory=list)
    slot_of: dict[str, int] = field(default_factory=dict)
    mode: dict[str, str] = field(default_factory=dict)
    unplanned: dict[str, str] = field(default_factory=dict)
    anti_deps: list[tuple[str, str, str]] = field(default_factory=list)
    model_dims: tuple[str, ...] = MODEL_DIMS

    @property
    def num_slots(self) -> int:
        """Number of buffers (the executor's arena size)."""
        return len(self.slots)

    def bytes(self, dims: Mapping[str, int] | None = None, float_bytes: int = 8) -> dict[tuple[str, ...], int]:
        """Planned bytes as a polynomial in the unresolved model dims.

        Parameters
        ----------
        dims:
            Sizes of model dims (e.g. ``{"V": 96}``); dims not given stay symbolic.
        float_bytes:
            Bytes per ``float`` element (8: float64, 4: float32).

        Returns
        -------
        dict
            Monomial (sorted tuple of symbols; ``()`` for the constant term) -> bytes.
        """
        return _poly(self.slots, dims or {}, float_bytes)

    def unshared_bytes(self, dims: Mapping[str, int] | None = None, float_bytes: int = 8) -> dict[tuple[str, ...], int]:
        """Monomial -> bytes the same values would take with one buffer each (what sharing saves).

        ``dims`` and ``float_bytes`` are as for :meth:`bytes`.
        """
        singles = [BufferSlot(0, s.region, s.dtype, s.shape, (v,), s.kind) for s in self.slots for v in s.values]
        return _poly(singles, dims or {}, float_bytes)

    def format_bytes(self, dims: Mapping[str, int] | None = None, float_bytes: int = 8) -> str:
        """:meth:`bytes` (same parameters) as text, e.g. ``"96 + 64*V B"``."""
        return format_poly(self.bytes(dims, float_bytes))

    def summary(self, dims: Mapping[str, int] | None = None) -> str:
        """Multi-line description: one line per slot, then totals (stable: golden files use it).

        Parameters
        ----------
        dims:
            Model dims for the byte totals (e.g. ``{"V": 96}``); symbolic when omitted.

        Returns
        -------
        str
        """
        lines = []
        for s in self.slots:
            shape = ",".join(str(d) for d in s.shape)
            vals = ", ".join(f"%{v}" for v in s.values)
            lines.append(f"slot {s.index:3d} {s.kind:<9} {s.dtype}[{shape}]  {s.region or '<top>'}: {vals}")
        modes: dict[str, int] = {}
        for m in self.mode.values():
            modes[m] = modes.get(m, 0) + 1
        lines.append(f"planned values: {len(self.slot_of)} in {len(self.slots)} slots "
                     f"({', '.join(f'{k} {v}' for k, v in sorted(modes.items()))}); "
                     f"unplanned: {len(self.unplanned)}")
        lines.append(f"planned bytes: {format_poly(self.bytes(dims))} "
                     f"(one buffer per value: {format_poly(self.unshared_bytes(dims))})")
        return "\n".join(lines)


def format_poly(poly: dict[tuple[str, ...], int]) -> str:
    """Bytes as text: ``{(): 96, ("V",): 64}`` -> ``"96 + 64*V B"``.

    Parameters
    ----------
    poly:
        Monomial (sorted tuple of symbols) -> bytes, as :meth:`MemoryPlan.bytes` returns.

    Returns
    -------
    str
    """
    if not poly:
        return "0 B"
    ordered = sorted(poly.items(), key=lambda item: (len(item[0]), item[0]))
    terms = [str(c) if not mono else f"{c}*{'*'.join(mono)}" for mono, c in ordered]
    return " + ".join(terms) + " B"


def _poly(slots: list[BufferSlot], dims: Mapping[str, int], float_bytes: int) -> dict[tuple[str, ...], int]:
    out: dict[tuple[str, ...], int] = {}
    for s in slots:
        coeff = float_bytes if s.dtype == "float" else ITEMSIZE[s.dtype]
        mono: list[str] = []
        for d in s.shape:
            if isinstance(d, int):
                coeff *= d
            elif d in dims:
                coeff *= int(dims[d])
            else:
                mono.append(d)
        key = tuple(sorted(mono))
        out[key] = out.get(key, 0) + coeff
    return {k: v for k, v in out.items() if v}


def plan_memory(graph: Graph, model_dims: tuple[str, ...] = MODEL_DIMS,
                dims: Mapping[str, int] | None = None) -> PassResult:
    """Plan static buffers for ``graph`` (see the module docstring).

    Parameters
    ----------
    graph:
        A verified graph; not modified (the result is an annotated copy).
    model_dims:
        Symbolic dims fixed by the model (``("V",)``).
    dims:
        Sizes of model dims for the byte count in ``info`` (e.g. ``{"V": 96}``);
        the plan itself stays symbolic.

    Returns
    -------
    PassResult
        The graph with ``graph.annotations["memory"]`` set; ``info`` gives the
        planned value and slot counts and the planned bytes (symbolic in ``V``).
    """
    out = copy_graph(graph)
    plan = MemoryPlan(model_dims=tuple(model_dims))
    _plan_region(out, "", plan, loop=None, pinned=frozenset())
    out.annotations["memory"] = plan
    info = {"values": len(plan.slot_of), "slots": plan.num_slots, "bytes": plan.format_bytes(dims)}
    return PassResult(out, True, info)


# ----------------------------------------------------------------------------- analysis of one region

def _static(v: Value, model_dims: tuple[str, ...]) -> bool:
    t = v.type
    return isinstance(t, TensorType) and all(isinstance(d, int) or d in model_dims for d in t.shape)


def _why_unplanned(node: Node, v: Value, model_dims: tuple[str, ...]) -> str | None:
    if get_op(node.op).tier == "control":
        return f"result of control op '{node.op}'"
    if node.op in VIEW_OPS:
        return f"a view ({node.op})"
    if not isinstance(v.type, TensorType):
        return "not a tensor"
    if not _static(v, model_dims):
        return f"dynamic shape {v.type}"
    return None


class _Region:
    """Per-region facts: positions, alias roots, last uses, readers."""

    def __init__(self, region: Graph, plan: MemoryPlan) -> None:
        self.region = region
        self.pos: dict[int, int] = {}             # id(value) -> defining node index (-1 for inputs)
        self.planned: set[int] = set()
        self.roots: dict[int, frozenset[Any]] = {}
        self.last: dict[Any, int] = {}            # root -> last index that may read it
        self.readers: dict[Any, set[int]] = {}    # root -> node indices that may read it
        for v in region.inputs:
            self.pos[id(v)] = -1
            self.roots[id(v)] = frozenset({id(v)})
        for i, node in enumerate(region.nodes):
            for v in node.outputs:
                self.pos[id(v)] = i
                why = _why_unplanned(node, v, plan.model_dims)
                if why is None:
                    self.planned.add(id(v))
                    self.roots[id(v)] = frozenset({id(v)})
                else:
                    plan.unplanned[v.name] = why
                    self.roots[id(v)] = self._alias_roots(node, v)
            self._reads(i, node)
        end = len(region.nodes)
        for v in region.outputs:
            self._read(end, v)

    def _alias_roots(self, node: Node, v: Value) -> frozenset[Any]:
        if node.op == "loop":
            k = node.outputs.index(v)
            return self.roots.get(id(node.inputs[1 + k]), frozenset()) | {("loop", id(node), k)}
        if get_op(node.op).tier == "control":
            return frozenset()  # forward logits, emit flags, cache handles: fresh, not ours
        out: frozenset[Any] = frozenset()
        for x in node.inputs:  # a view (or unplanned result) may alias any tensor input
            out |= self.roots.get(id(x), frozenset())
        return out

    def _reads(self, i: int, node: Node) -> None:
        for v in node.inputs:
            self._read(i, v)
        if node.regions:
            from graphrt.analysis import region_reads

            for v in region_reads(node):
                self._read(i, v)

    def _read(self, i: int, v: Value) -> None:
        for r in self.roots.get(id(v), ()):
            if self.last.get(r, -2) < i:
                self.last[r] = i
            self.readers.setdefault(r, set()).add(i)

    def escapes(self) -> dict[Any, set[int]]:
        """Root -> output positions of the region through which it may leave."""
        out: dict[Any, set[int]] = {}
        for k, v in enumerate(self.region.outputs):
            for r in self.roots.get(id(v), ()):
                out.setdefault(r, set()).add(k)
        return out


# ----------------------------------------------------------------------------- planning

def _plan_region(region: Graph, key: str, plan: MemoryPlan, loop: Node | None, pinned: frozenset[int]) -> None:
    """Plan ``region``'s values; ``pinned`` are carried indices whose yields must stay unplanned."""
    facts = _Region(region, plan)
    escapes = facts.escapes()
    dedicated: list[tuple[Value, str, str]] = []
    shared: list[Value] = []
    for node in region.nodes:
        for v in node.outputs:
            if id(v) not in facts.planned:
                continue
            if node.op in ONCE_OPS:
                dedicated.append((v, "once", "once"))
            elif id(v) in escapes:
                verdict = _escape_verdict(v, key, escapes, facts, loop, pinned, plan)
                if verdict is None:
                    facts.planned.discard(id(v))
                else:
                    dedicated.append((v, *verdict))
            else:
                shared.append(v)
    for v, kind, mode in dedicated:
        _new_slot(plan, key, v, kind)
        plan.mode[v.name] = mode
    _linear_scan(region, key, shared, facts, plan)
    for node in region.nodes:
        for i, body in enumerate(node.regions):
            body_key = node.name if i == 0 else f"{node.name}#{i}"
            if node.op == "loop":
                pins = frozenset(k for k in range(len(node.outputs)) if ("loop", id(node), k) in escapes)
                _plan_region(body, body_key, plan, node, pins)
            else:  # regions of other control ops: planned without carried reuse
                _plan_region(body, body_key, plan, None, frozenset())


def _escape_verdict(v: Value, key: str, escapes: dict[Any, set[int]], facts: _Region, loop: Node | None,
                    pinned: frozenset[int], plan: MemoryPlan) -> tuple[str, str] | None:
    """(kind, mode) for a planned value that leaves its region, or None (recorded as unplanned)."""
    where = escapes[id(v)]
    if loop is None:
        return "dedicated", "out"
    if where == {0}:
        return "dedicated", "out"  # the loop condition: read at once, never bound to an input
    region = facts.region
    if len(where) != 1 or 0 in where:
        plan.unplanned[v.name] = "yielded at several positions"
        return None
    k = next(iter(where)) - 1
    if k in pinned:
        plan.unplanned[v.name] = "the loop's result leaves the enclosing region (would be overwritten next run)"
        return None
    u = region.inputs[k]
    if id(u) in escapes:
        plan.unplanned[v.name] = f"carried input %{u.name} is yielded again (aliases across iterations)"
        return None
    last, written = facts.last.get(id(u), -1), facts.pos[id(v)]
    if last > written:
        plan.unplanned[v.name] = f"carried input %{u.name} is read after %{v.name} is written"
        return None
    writer = region.nodes[written].name
    for r in sorted(facts.readers.get(id(u), ())):
        if r < len(region.nodes) and r != written:
            plan.anti_deps.append((key, region.nodes[r].name, writer))
    return "carried", ("copy" if last == written else "out")


def _new_slot(plan: MemoryPlan, key: str, v: Value, kind: str) -> int:
    t = v.type
    assert isinstance(t, TensorType)
    index = len(plan.slots)
    plan.slots.append(BufferSlot(index, key, t.dtype, t.shape, (v.name,), kind))
    plan.slot_of[v.name] = index
    return index


def _linear_scan(region: Graph, key: str, values: list[Value], facts: _Region, plan: MemoryPlan) -> None:
    """Assign shared slots: a buffer is reused once every reader of its last value is done."""
    free: dict[tuple[str, tuple[Dim, ...]], list[int]] = {}
    busy: list[tuple[int, int, str]] = []  # (last read index, slot, value name)
    occupant: dict[int, str] = {}
    by_name = {v.name: v for v in values}
    for v in values:  # values are in program order
        i = facts.pos[id(v)]
        while busy and busy[0][0] < i:
            _, slot, _name = heapq.heappop(busy)
            s = plan.slots[slot]
            free.setdefault((s.dtype, s.shape), []).append(slot)
        t = v.type
        assert isinstance(t, TensorType)
        pool = free.get((t.dtype, t.shape))
        if pool:
            slot = pool.pop()
            prev = occupant[slot]
            old = plan.slots[slot]
            plan.slots[slot] = BufferSlot(old.index, old.region, old.dtype, old.shape, old.values + (v.name,), old.kind)
            plan.slot_of[v.name] = slot
            _record_reuse(region, key, facts, by_name[prev], v, plan)
        else:
            slot = _new_slot(plan, key, v, "shared")
        plan.mode[v.name] = "out"
        occupant[slot] = v.name
        heapq.heappush(busy, (facts.last.get(id(v), i), slot, v.name))


def _record_reuse(region: Graph, key: str, facts: _Region, old: Value, new: Value, plan: MemoryPlan) -> None:
    writer = region.nodes[facts.pos[id(new)]].name
    readers = set(facts.readers.get(id(old), ())) | {facts.pos[id(old)]}
    for r in sorted(readers):
        if 0 <= r < len(region.nodes):
            plan.anti_deps.append((key, region.nodes[r].name, writer))
