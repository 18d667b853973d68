"""The executor: a graph run per request as a resumable program.

:class:`Program` interprets a verified graph with each op's implementation
(the registry's torch reference on CPU; the CUDA kernel registered on the op's
entry for CUDA tensors: :func:`resolve_impl`, one lookup). It runs until it reaches a
``forward`` and suspends with the request's one-row
:class:`~graphrt.backbone.ForwardBatch`; the caller resumes it with the
logits. ``emit`` writes an :class:`~graphrt.events.Emission` to the program's
outbox and goes on; ``commit`` suspends with a :class:`~graphrt.events.CacheCrop`
(:mod:`graphrt.events` states the protocol). ``loop`` regions run as nested, equally
resumable interpretations, so a program is a Python generator all the way down
and there is no second, run-to-completion interpreter.

Failures name the node: :class:`ExecutionError` says which node of which graph
failed and why.

Memory: when the graph carries a memory plan (``graph.annotations["memory"]``,
from :mod:`graphrt.passes.memory_planning`), each :class:`Program` keeps an
arena of static buffers, allocated on a planned value's first use; afterwards
its node writes into that buffer (through :mod:`graphrt.out_variants`, or a
``copy_`` of the reference's result), so steady-state steps allocate no new
tensors for planned values.

Streams: when the graph carries a stream schedule (``annotations["streams"]``,
from :mod:`graphrt.passes.stream_assignment`) and runs on CUDA, each region's
nodes are issued on their assigned streams by a :class:`StreamRunner`, over the
cuda-python streams and events of :mod:`graphrt.cuda_kernels.streams` (NOT YET
RUN ON A GPU): side streams wait for the host's stream at region entry,
consumers wait for their producers' events, and every host synchronisation
(``forward``, ``emit``, ``commit``, ``loop``) and the region's end join all
streams back. On CPU the nodes run in program order, which is one of the orders
the schedule allows.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, Generator

import torch

from graphrt.backbone import ForwardBatch
from graphrt.events import (NOT_FINISHED, CacheCrop, CacheHandle, Emission, Event, ExecutionError, causal_mask,
                            emission, flags)
from graphrt.ir import Graph, Node
from graphrt.lowering import SegmentGraph, generate_step, run_generated
from graphrt.ops import forward_extra_inputs
from graphrt.registry import get_op

__all__ = ["Arena", "CacheCrop", "CacheHandle", "Emission", "Event", "ExecutionError", "LoweredGraph", "Program",
           "StreamRunner", "causal_mask", "make_stream_runner", "resolve_impl"]


Impl = Callable[..., Any]


def resolve_impl(op: str, device: torch.device, kernels: str = "auto") -> Impl:
    """The implementation of ``op`` for tensors on ``device``: its registry entry's
    (:meth:`graphrt.registry.OpDef.implementation`, one lookup).

    ``kernels``: ``"auto"`` runs the entry's kernel for the device's kind where it has one (CUDA
    kernels; a few host kernels, such as the n-gram lookup's);
    ``"simulator"`` runs those kernels on CPU tensors in Numba's CUDA simulator (tests);
    ``"off"`` always runs the registry's torch reference. The first time a device needs
    kernels, :mod:`graphrt.cuda_kernels` is imported, and its kernels register themselves on
    their ops' entries (importing it imports no numba).
    """
    if kernels == "simulator" or (kernels == "auto" and device.type == "cuda"):
        _register_device_kernels()
    impl = get_op(op).implementation(device, kernels)
    assert impl is not None, f"op '{op}' has no reference"
    return impl


@functools.cache
def _register_device_kernels() -> None:
    import graphrt.cuda_kernels  # noqa: F401  (each kernel registers itself on its op's registry entry)


@dataclass
class _Instr:
    node: Node
    impl: Impl | None
    attrs: dict[str, Any]
    ins: list[int]
    outs: list[int]
    slot: int | None = None        # memory plan: arena slot of the (single) output
    mode: str = ""                 # "out" | "copy" | "once"
    out_impl: Impl | None = None   # out-variant of the reference, when the reference runs
    stream: int = 0                # stream schedule: stream index (0: the host's stream)
    waits: tuple[int, ...] = ()    # instruction indices whose events to wait for
    record: bool = False           # record an event after this instruction


class LoweredGraph:
    """A graph prepared for interpretation: attributes resolved, implementations bound."""

    def __init__(self, graph: Graph, device: torch.device, kernels: str = "auto", _plans: Any = None,
                 _key: str = "", interpret: bool = False) -> None:
        self.graph = graph
        self.interpret = interpret  # run through the reference interpreter instead of the generated code
        self._generated: Any = None
        self.key = _key  # region key of the plans: "" top level, else the owning node's name
        self.inputs = [id(v) for v in graph.inputs]
        self.outputs = [id(v) for v in graph.outputs]
        self.instrs: list[_Instr] = []
        self.regions: dict[int, LoweredGraph] = {}
        plans = _plans if _plans is not None else (getattr(graph, "annotations", None) or {})
        self.plans = plans
        # CUDA graphs of the capture plan's static segments (generated code on CUDA; NOT YET RUN ON A GPU).
        self.capture = device.type == "cuda" and "capture" in plans and os.environ.get("GRAPHRT_CUDA_GRAPHS", "1") != "0"
        plan = plans.get("memory")
        self.num_slots = plan.num_slots if plan is not None else 0
        for node in graph.nodes:
            opdef = get_op(node.op)
            attrs = opdef.resolve_attrs(node.attrs, f"node '{node.name}'")
            impl = None if opdef.tier == "control" else resolve_impl(node.op, device, kernels)
            if impl is not None and not node.inputs and device.type != "cpu":
                impl = _placed(impl, device)  # constants and layouts: no input to take a device from
            ins = _Instr(node, impl, attrs, [id(v) for v in node.inputs], [id(v) for v in node.outputs])
            if plan is not None and impl is not None and len(node.outputs) == 1:
                _bind_plan(ins, plan, opdef.reference)
            self.instrs.append(ins)
            for i, region in enumerate(node.regions):
                key = node.name if i == 0 else f"{node.name}#{i}"
                self.regions[id(region)] = LoweredGraph(region, device, kernels, plans, key)
        schedule = plans.get("streams")
        region_schedule = schedule.regions.get(_key) if schedule is not None else None
        self.streams = _bind_schedule(self.instrs, region_schedule, device) if region_schedule else None

    @property
    def generated(self) -> Any:
        """The graph as generated straight-line Python (:mod:`graphrt.lowering`), built on first use."""
        if self._generated is None:
            self._generated = generate_step(self)
        return self._generated

    @property
    def code(self) -> str:
        """The generated Python source of the graph (printable)."""
        return self.generated.code


def _placed(impl: Impl, device: torch.device) -> Impl:
    """``impl`` with its (input-less) result moved to ``device``; such nodes are constants the
    passes hoist out of loops, so the copy happens once, not every step."""
    def run(**attrs: Any) -> Any:
        out = impl(**attrs)
        return tuple(t.to(device) for t in out) if isinstance(out, tuple) else out.to(device)

    return run


def _bind_plan(ins: _Instr, plan: Any, reference: Impl | None) -> None:
    """Attach the memory plan's slot and write mode to one instruction."""
    name = ins.node.outputs[0].name
    slot = plan.slot_of.get(name)
    if slot is None:
        return
    ins.slot, ins.mode = slot, plan.mode.get(name, "copy")
    if ins.mode == "out" and ins.impl is reference:
        ins.out_impl = get_op(ins.node.op).out_variant


def _bind_schedule(instrs: list[_Instr], schedule: Any, device: torch.device) -> "StreamRunner | None":
    """Attach a region's stream schedule to its instructions; the runner, or None (CPU: program order)."""
    index = {ins.node.name: i for i, ins in enumerate(instrs)}
    for ins in instrs:
        name = ins.node.name
        ins.stream = schedule.stream.get(name, 0) if ins.impl is not None else 0
        ins.waits = tuple(index[p] for p in schedule.waits.get(name, ()) if p in index)
        for i in ins.waits:
            instrs[i].record = True
    return make_stream_runner(max((ins.stream for ins in instrs), default=0) + 1, device)


class StreamRunner:
    """Issues a region's instructions on CUDA streams (see the module docstring). NOT YET RUN ON A GPU.

    The streams and events are :mod:`graphrt.cuda_kernels.streams`' cuda-python ones: stream 0 is
    torch's current stream (wrapped, not owned), the side streams are cuda-python streams the runner
    creates, and torch ops and Numba kernels reach a side stream through its torch view
    (:meth:`~graphrt.cuda_kernels.streams.Stream.torch`, a ``torch.cuda.ExternalStream`` over the
    same handle), so everything on one scheduled stream shares one queue.

    Parameters
    ----------
    num_streams:
        Streams the region's schedule uses (stream 0 is the current stream).
    device:
        The CUDA device.
    """

    def __init__(self, num_streams: int, device: torch.device) -> None:
        from graphrt.cuda_kernels import streams

        self._streams = streams
        self.device = device
        self.side = [streams.Stream.create(device.index) for _ in range(num_streams - 1)]
        self._side_torch = [s.torch() for s in self.side]
        self._fork = streams.Event()
        self._joins = [streams.Event() for _ in self.side]

    def _stream(self, index: int) -> tuple[Any, torch.cuda.Stream]:
        """Stream ``index`` as ``(cuda-python Stream, its torch view)``."""
        if index == 0:
            current = torch.cuda.current_stream(self.device)
            return self._streams.Stream.from_torch(current), current
        return self.side[index - 1], self._side_torch[index - 1]

    def fork(self) -> None:
        """Side streams wait for everything issued so far on the current stream."""
        self._fork.record(self._stream(0)[0])
        for s in self.side:
            s.wait(self._fork)

    def join(self) -> None:
        """The current stream waits for all side streams (before a host sync, at region end)."""
        main = self._stream(0)[0]
        for s, event in zip(self.side, self._joins):
            main.wait(s.record(event))

    def compute(self, index: int, ins: _Instr, args: list[Any], arena: "Arena") -> Any:
        """Run one instruction on its stream after its waits; record its event if someone waits for it."""
        stream, view = self._stream(ins.stream)
        for w in ins.waits:
            stream.wait(arena.events[(id(self), w)])
        with torch.cuda.stream(view):
            for a in args:  # reads across streams: the caching allocator must not reuse them early
                if isinstance(a, torch.Tensor) and a.is_cuda:
                    a.record_stream(view)
            result = _compute(ins, args, arena)
        if ins.record:
            self.record(index, ins, arena)
        return result

    def record(self, index: int, ins: _Instr, arena: "Arena") -> None:
        """Record instruction ``index``'s event on its stream (control ops: the current stream)."""
        key = (id(self), index)
        event = arena.events.get(key)
        if event is None:
            event = arena.events[key] = self._streams.Event()
        event.record(self._stream(ins.stream)[0])


def make_stream_runner(num_streams: int, device: torch.device) -> StreamRunner | None:
    """The runner for a region on ``device``: None on CPU or with one stream (program order)."""
    if device.type != "cuda" or num_streams <= 1:
        return None
    return StreamRunner(num_streams, device)


def _compute(ins: _Instr, args: list[Any], arena: "Arena") -> Any:
    """One non-control instruction: into its planned buffer, or through its implementation."""
    if ins.slot is not None:
        return arena.run(ins, args)
    return ins.impl(*args, **ins.attrs)  # type: ignore[misc]


class Program:
    """One request's run of a lowered graph, resumable at ``forward`` and ``commit``; ``emit`` writes to
    :attr:`outbox` (the protocol of :mod:`graphrt.events`, the same for both ways of running).

    Parameters
    ----------
    lowered:
        The graph prepared for ``device``.
    inputs:
        Graph input name -> value.
    interpret:
        Run the reference interpreter (every node dispatched) instead of the generated
        code; default: ``lowered.interpret``,
        or the interpreter when the environment sets ``GRAPHRT_INTERPRET=1`` (a debug switch).
    logprobs:
        Whether the caller reads emitted log-probabilities. ``False`` lets the generated code
        skip the nodes only they need (the emits then carry ``None``); tokens are unchanged.
        The interpreter always computes them.

    Attributes
    ----------
    outbox:
        :class:`~graphrt.events.Emission` s the program emitted since the caller last cleared it.

    >>> # prog = Program(lowered, {"prompt": ids, ...}); ev = prog.start(); ev = prog.resume(logits)
    """

    def __init__(self, lowered: LoweredGraph, inputs: dict[str, Any], interpret: bool | None = None,
                 logprobs: bool = True) -> None:
        names = [v.name for v in lowered.graph.inputs]
        missing = [n for n in names if n not in inputs]
        extra = [n for n in inputs if n not in names]
        if missing or extra:
            raise ValueError(f"graph '{lowered.graph.name}' inputs: expected {names}, "
                             f"missing {missing}, unexpected {extra}")
        self.arena = Arena()
        self.outbox: list[Emission] = []
        if interpret is None:
            interpret = lowered.interpret or os.environ.get("GRAPHRT_INTERPRET", "") == "1"
        self.interpreted = interpret
        if interpret:
            env = {vid: inputs[v.name] for vid, v in zip(lowered.inputs, lowered.graph.inputs)}
            self._gen = _run(lowered, env, self.arena, self.outbox)
        else:
            self._gen = run_generated(lowered.generated, [inputs[v.name] for v in lowered.graph.inputs],
                                      self.arena, self.outbox, logprobs)
        self.finished = False
        self.outputs: list[Any] | None = None

    def start(self) -> Event | None:
        """Run to the first suspension; ``None`` if the graph finished without one."""
        return self._advance(None, first=True)

    def resume(self, value: Any) -> Event | None:
        """Resume with logits (after a forward) or ``None`` (after a commit)."""
        return self._advance(value, first=False)

    def close(self) -> None:
        """Abandon the program (cancellation, budget reached)."""
        self._gen.close()
        self.finished = True

    def _advance(self, value: Any, first: bool) -> Event | None:
        if self.finished:
            raise RuntimeError("Program: resumed after it finished")
        try:
            return next(self._gen) if first else self._gen.send(value)
        except StopIteration as stop:
            self.finished = True
            self.outputs = stop.value
            return None


class Arena:
    """A program's static buffers (see the module docstring).

    Attributes
    ----------
    buffers:
        ``(slot, dtype, device, shape) -> tensor``; created on a slot's first use.
    bound:
        Instruction -> the buffer it writes (after its first run).
    misses:
        Times a result did not fit its instruction's buffer (a plan/run-time
        mismatch, e.g. a dtype change); 0 in steady state.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[Any, ...], torch.Tensor] = {}
        self.bound: dict[int, torch.Tensor] = {}
        self.misses = 0
        self.events: dict[tuple[int, int], Any] = {}
        self.segments: dict[Any, Any] = {}
        self._calls: list[Callable[..., Any]] = []
        self._planned: list[_Instr] | None = None

    def calls(self, planned: list[_Instr]) -> list[Callable[..., Any]]:
        """One callable per instruction of ``planned`` (the generated code's planned nodes, in the
        order it calls them as ``_R[k](*args)``). Each starts as :meth:`run` and, once the
        instruction is bound to its buffer, becomes the direct call :meth:`run` would make: the
        out-variant with ``out=`` the buffer, or the buffer itself for a ``once`` value. Other
        instructions (compute, then copy) keep going through :meth:`run`."""
        if self._planned is not planned:
            self._planned = planned
            self._calls = [functools.partial(self._first, k, ins) for k, ins in enumerate(planned)]
        return self._calls

    def _first(self, k: int, ins: _Instr, *args: Any) -> torch.Tensor:
        result = self.run(ins, list(args))
        buf = self.bound.get(id(ins))
        if buf is not None and ins.mode == "once":
            self._calls[k] = functools.partial(_constant, buf)
        elif buf is not None and ins.out_impl is not None:
            self._calls[k] = functools.partial(ins.out_impl, out=buf, **ins.attrs)
        else:
            self._calls[k] = functools.partial(self._again, ins)
        return result

    def _again(self, ins: _Instr, *args: Any) -> torch.Tensor:
        return self.run(ins, list(args))

    def segment(self, key: Any) -> Any:
        """This program's :class:`graphrt.lowering.SegmentGraph` of the captured run ``key``."""
        seg = self.segments.get(key)
        if seg is None:
            seg = self.segments[key] = SegmentGraph()
        return seg

    def run(self, ins: _Instr, args: list[Any]) -> torch.Tensor:
        """Execute a planned instruction into its buffer; returns the buffer."""
        buf = self.bound.get(id(ins))
        if buf is not None:
            if ins.mode == "once":
                return buf
            if ins.out_impl is not None:
                return ins.out_impl(*args, out=buf, **ins.attrs)
        result = ins.impl(*args, **ins.attrs)  # type: ignore[misc]
        if buf is not None and buf.shape == result.shape and buf.dtype == result.dtype \
                and buf.device == result.device:
            return buf.copy_(result)
        if buf is not None:
            self.misses += 1
        key = (ins.slot, result.dtype, result.device, tuple(result.shape))
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = torch.empty(result.shape, dtype=result.dtype, device=result.device)
        self.bound[id(ins)] = buf
        return buf.copy_(result)


def _constant(buf: torch.Tensor, *args: Any) -> torch.Tensor:
    """A ``once`` value after its first run: its buffer, whatever the inputs."""
    return buf


def _run(lowered: LoweredGraph, env: dict[int, Any], arena: Arena | None = None,
         outbox: list[Emission] | None = None) -> Generator[Event, Any, list[Any]]:
    arena = arena if arena is not None else Arena()
    outbox = outbox if outbox is not None else []
    streams = lowered.streams
    if streams is not None:
        streams.fork()
    for index, ins in enumerate(lowered.instrs):
        node = ins.node
        args = [env[i] for i in ins.ins]
        try:
            if ins.impl is not None:
                result = _compute(ins, args, arena) if streams is None else streams.compute(index, ins, args, arena)
            else:
                if streams is not None:
                    streams.join()  # a host sync sees every stream's work
                result = yield from _control(lowered, node, args, ins.attrs, env, arena, outbox)
                if streams is not None and ins.record:
                    streams.record(index, ins, arena)
        except (ExecutionError, GeneratorExit):
            raise
        except Exception as exc:  # name the failing node, keep the cause
            raise ExecutionError(f"node '{node.name}' ({node.op}) in graph '{lowered.graph.name}' failed: "
                                 f"{type(exc).__name__}: {exc}") from exc
        if len(ins.outs) == 1:
            env[ins.outs[0]] = result
        elif ins.outs:
            for vid, r in zip(ins.outs, result):
                env[vid] = r
    if streams is not None:
        streams.join()
    return [env[i] for i in lowered.outputs]


def _control(lowered: LoweredGraph, node: Node, args: list[Any], attrs: dict[str, Any], env: dict[int, Any],
             arena: Arena, outbox: list[Emission]) -> Generator[Event, Any, Any]:
    if node.op == "forward":
        return (yield from _forward(node, args, attrs))
    if node.op == "emit":  # to the outbox, as the generated code does; the caller reads it at the next suspension
        outbox.append(emission(node.name, *args))
        return NOT_FINISHED
    if node.op == "commit":
        cache, length = args
        yield CacheCrop(int(length), node.name)
        return cache
    if node.op == "loop":
        return (yield from _loop(lowered.regions[id(node.regions[0])], args, env, arena, outbox))
    raise ExecutionError(f"node '{node.name}': control op '{node.op}' has no interpreter")


def _forward(node: Node, args: list[Any], attrs: dict[str, Any]) -> Generator[Event, Any, Any]:
    cache, tokens, positions = args[:3]
    extra = dict(zip(forward_extra_inputs(attrs), args[3:]))
    n = tokens.shape[0]
    dev = tokens.device
    if attrs["attention"] == "causal":
        attention = causal_mask(n, dev)
    elif attrs["attention"] == "bidirectional":
        attention = torch.ones(n, n, dtype=torch.bool, device=dev)
    else:
        attention = extra["mask"]
    kv_write = extra["kv_write"] if attrs["write"] == "mask" else flags(n, attrs["write"] == "all", dev)
    adapter = extra["adapter"] if attrs["adapter"] == "mask" else flags(n, attrs["adapter"] == "all", dev)
    logits = yield ForwardBatch.single(cache.row, tokens, positions, attention, attrs["attention"], kv_write, adapter,
                                       attrs["logits"])
    if attrs["write"] == "none":
        return logits
    return logits, cache


def _loop(body: LoweredGraph, args: list[Any], outer: dict[int, Any], arena: Arena,
          outbox: list[Emission]) -> Generator[Event, Any, Any]:
    cond, carried = args[0], list(args[1:])
    # Values are SSA and uniquely named, so the body may bind into the enclosing
    # environment directly: each iteration rebinds the same names.
    while bool(cond):
        outer.update(zip(body.inputs, carried))
        results = yield from _run(body, outer, arena, outbox)
        cond, carried = results[0], results[1:]
    if len(carried) == 1:
        return carried[0]
    return tuple(carried)
