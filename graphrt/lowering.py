"""Lowering: a lowered graph as generated straight-line Python, the executor's hot path.

:func:`generate_step` turns a :class:`~graphrt.executor.LoweredGraph` (ops already
resolved once through the registry, memory plan and stream schedule bound) into
the source of one Python generator function, as torch.fx generates a
GraphModule's code: one line per node, loops as ``while`` statements with their
body inlined (values are SSA-named, so inlining cannot clash), and no per-node
dispatch at run time. The code prints (:attr:`GeneratedStep.code`)::

    def ar(prompt, cache, seed, ..., _arena, _outbox, _logprobs=True):
        _R = _arena.calls(_planned0)                         # planned nodes, bound to their buffers
        v0 = _R[0](prompt)                                   # size (planned)
        v2 = _f1(prompt, v1)                                 # arange_like
        v3 = yield _forward2(cache, prompt, v2)              # forward (suspends)
        ...
        v35 = _R[7](v7) if _logprobs else None               # log_softmax (log-probs only)
        while loop_cond:
            ...

A planned node is called as ``_R[k](...)``: its first run goes through
:meth:`graphrt.executor.Arena.run` (which binds its buffer), later runs call its
out-variant on that buffer directly (:meth:`~graphrt.executor.Arena.calls`).
Nodes only ``emit``'s log-probs read run only when ``_logprobs`` is true.

It speaks the interpreter's protocol (:func:`graphrt.executor._run`, the
reference; :mod:`graphrt.events`): ``emit`` writes an
:class:`~graphrt.events.Emission` to the program's outbox, built by the same
helper, and returns ``False``; ``forward`` and ``commit`` suspend.

A failure names the node: the generated lines map back to their nodes.
"""

from __future__ import annotations

import functools
import keyword
import re
import sys
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generator

import torch

from graphrt.analysis import logprob_only_nodes
from graphrt.backbone import ForwardBatch
from graphrt.events import NOT_FINISHED, CacheCrop, ExecutionError, causal_mask, emission, flags
from graphrt.ops import forward_extra_inputs

if TYPE_CHECKING:  # pragma: no cover
    from graphrt.executor import LoweredGraph

_FILENAME = "<graphrt-lowered>"


@dataclass
class GeneratedStep:
    """The generated code of one lowered graph.

    Attributes
    ----------
    code:
        The Python source (printable).
    fn:
        The generator function ``fn(*graph_inputs, _arena, _outbox)``.
    lines:
        Line number of the generated source -> ``(node name, op, graph name)``.
    """

    code: str
    fn: Any
    lines: dict[int, tuple[str, str, str]] = field(default_factory=dict)

    def node_at(self, tb: TracebackType | None) -> tuple[str, str, str] | None:
        """The node whose generated line raised, from a traceback (innermost generated frame)."""
        found = None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == self.filename:
                found = self.lines.get(tb.tb_lineno)
            tb = tb.tb_next
        return found

    @property
    def filename(self) -> str:
        """The pseudo file name the code was compiled under."""
        return self.fn.__code__.co_filename


class _Writer:
    """Source lines with an indentation level and a line -> node map."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.where: dict[int, tuple[str, str, str]] = {}
        self.indent = 1
        self.ns: dict[str, Any] = {}
        self.names: dict[int, str] = {}
        self.taken: set[str] = set()
        self.count = 0
        self.capture = False
        self.optional: frozenset[str] = frozenset()  # nodes computed only when ``_logprobs`` is true
        self.direct: list[Any] | None = None  # planned instructions called through ``_R[k]`` (see Arena.calls)

    def line(self, text: str, node: Any = None, graph: str = "", comment: str = "") -> None:
        pad = "    " * self.indent
        self.lines.append(f"{pad}{text}" + (f"  # {comment}" if comment else ""))
        if node is not None:
            self.where[len(self.lines)] = (node.name, node.op, graph)

    def const(self, prefix: str, value: Any) -> str:
        """A name in the code's namespace bound to ``value``."""
        name = f"_{prefix}{self.count}"
        self.count += 1
        self.ns[name] = value
        return name

    def var(self, value: Any) -> str:
        """The Python name of an SSA value (its own name when that is a free identifier)."""
        vid = id(value)
        if vid in self.names:
            return self.names[vid]
        base = re.sub(r"\W", "_", value.name) or "v"
        if base[0].isdigit() or base.startswith("_"):
            base = "v" + base
        name, n = base, 1
        while name in self.taken or keyword.iskeyword(name):
            name, n = f"{base}_{n}", n + 1
        self.taken.add(name)
        self.names[vid] = name
        return name

    def use(self, vid: int, lowered: "LoweredGraph") -> str:
        name = self.names.get(vid)
        if name is None:
            raise KeyError(f"lowering graph '{lowered.graph.name}': a value is used before it is defined")
        return name


def generate_step(lowered: "LoweredGraph") -> GeneratedStep:
    """Generate the straight-line Python of ``lowered`` (see the module docstring).

    Parameters
    ----------
    lowered:
        A :class:`~graphrt.executor.LoweredGraph` (top level).

    Returns
    -------
    GeneratedStep
        Its code, the compiled generator function and the line map.
    """
    w = _Writer()
    w.capture = lowered.capture
    w.taken.update({"_arena", "_outbox", "_logprobs", "_R"})
    if not lowered.capture and not _has_streams(lowered):  # captured or multi-stream code runs every node
        w.optional = logprob_only_nodes(lowered.graph)
        w.direct = []
        w.line(f"_R = _arena.calls({w.const('planned', w.direct)})  # planned nodes, bound to their buffers")
    params = [w.var(v) for v in lowered.graph.inputs]
    fname = re.sub(r"\W", "_", lowered.graph.name) or "step"
    if fname[0].isdigit():
        fname = "g" + fname
    _region(w, lowered)
    outs = ", ".join(w.use(i, lowered) for i in lowered.outputs)
    w.line(f"return [{outs}]")
    w.line("yield  # a generator even without a suspension point")
    header = f"def {fname}({', '.join(params + ['*', '_arena', '_outbox', '_logprobs=True'])}):"
    code = "\n".join([header] + w.lines) + "\n"
    filename = f"{_FILENAME}:{lowered.graph.name}:{id(lowered):x}"
    ns = dict(w.ns)
    exec(compile(code, filename, "exec"), ns)  # noqa: S102  (our own generated code)
    lines = {n + 1: where for n, where in w.where.items()}  # +1: the header line
    return GeneratedStep(code, ns[fname], lines)


def _has_streams(lowered: "LoweredGraph") -> bool:
    """Whether any region of ``lowered`` issues its nodes on several streams."""
    return lowered.streams is not None or any(_has_streams(r) for r in lowered.regions.values())


def _region(w: _Writer, lowered: "LoweredGraph") -> None:
    """Lines of one region (its inputs already bound to names)."""
    gname = lowered.graph.name
    streams = None if w.capture else lowered.streams  # captured code runs on one stream
    runner = w.const("streams", streams) if streams is not None else None
    if runner is not None:
        w.line(f"{runner}.fork()")
    runs = {r.start: r for r in captured_runs(lowered)} if w.capture else {}
    skip_to = 0
    for index, ins in enumerate(lowered.instrs):
        if index < skip_to:
            continue
        if index in runs:
            skip_to = runs[index].stop
            _captured_run(w, lowered, runs[index])
            continue
        node = ins.node
        args = [w.use(i, lowered) for i in ins.ins]
        outs = [w.var(v) for v in node.outputs]
        target = ", ".join(outs) if outs else "_"
        if ins.impl is not None:
            call = _compute_call(w, ins, index, args, runner)
            if node.name in w.optional:  # read only by emit's log-probs: skipped when none were asked for
                nones = "None" if len(outs) == 1 else "(" + "None, " * len(outs) + ")"
                w.line(f"{target} = {call} if _logprobs else {nones}", node, gname, f"{node.op} (log-probs only)")
            else:
                w.line(f"{target} = {call}", node, gname, node.op)
            continue
        if runner is not None:
            w.line(f"{runner}.join()")
        _control(w, lowered, ins, args, outs, target)
        if runner is not None and ins.record:
            w.line(f"{runner}.record({index}, {w.const('i', ins)}, _arena)")
    if runner is not None:
        w.line(f"{runner}.join()")


@dataclass(frozen=True)
class CapturedRun:
    """A run of a region's instructions the executor captures as one CUDA graph.

    Attributes
    ----------
    region:
        The region key (as in the capture plan: ``""`` top level, else the loop node's name).
    start, stop:
        Instruction indices ``[start, stop)`` of the region.
    nodes:
        Their node names, in program order.
    """

    region: str
    start: int
    stop: int
    nodes: tuple[str, ...]


def captured_runs(lowered: "LoweredGraph") -> list[CapturedRun]:
    """The runs of ``lowered``'s own instructions (not its sub-regions') that the executor captures.

    The executor cuts a region's instructions at every control instruction (the program
    yields or loops there) and at every boundary of the graph's capture plan
    (``annotations["capture"]``), and captures a run when it is exactly one segment
    the plan marks capturable. A test checks these are exactly the plan's segments.
    """
    plan = (lowered.plans or {}).get("capture")
    if plan is None:
        return []
    segment_of = {name: seg for seg in plan.segments if seg.region == lowered.key for name in seg.nodes}
    instrs = lowered.instrs
    runs: list[CapturedRun] = []
    current: list[int] = []

    def close() -> None:
        if current:
            names = tuple(instrs[j].node.name for j in current)
            seg = segment_of.get(names[0])
            if seg is not None and seg.capturable and names == seg.nodes:
                runs.append(CapturedRun(lowered.key, current[0], current[-1] + 1, names))
            current.clear()

    for i, ins in enumerate(instrs):
        if ins.impl is None:  # a control instruction: the program yields or loops here
            close()
            continue
        if current and segment_of.get(ins.node.name) is not segment_of.get(instrs[current[0]].node.name):
            close()
        current.append(i)
    close()
    return runs


class SegmentGraph:
    """One program's CUDA graph of one captured run (NOT YET RUN ON A GPU).

    The first call runs the segment eagerly (warm-up: kernels compile, the arena binds
    its buffers); the second copies the segment's inputs into static buffers and
    captures the segment on them through :func:`graphrt.cuda_kernels.graphs.capture`;
    every later call copies the inputs into those buffers and replays the graph on
    torch's current stream. Outputs are the arena buffers (and views of them) the
    capture wrote, so they keep their addresses. A call whose inputs change shape or
    dtype, or a capture that fails, falls back to eager runs for good (``reason`` says why).
    """

    def __init__(self) -> None:
        self.calls = 0
        self.graph: Any = None
        self.static: list[Any] = []
        self.outputs: tuple[Any, ...] = ()
        self.reason = ""

    def run(self, fn: Any, arena: Any, args: list[Any]) -> tuple[Any, ...]:
        """Run the segment ``fn(arena, *args)``: eagerly, by capturing it, or by replaying it."""
        self.calls += 1
        if self.reason or self.calls == 1:
            return fn(arena, *args)
        if self.graph is None:
            return self._capture(fn, arena, args)
        for buf, a in zip(self.static, args):
            if isinstance(buf, torch.Tensor):
                if buf.shape != a.shape or buf.dtype != a.dtype:
                    self.reason = f"input changed from {list(buf.shape)} {buf.dtype} to {list(a.shape)} {a.dtype}"
                    return fn(arena, *args)
                buf.copy_(a)
        from graphrt.cuda_kernels.streams import current_stream

        self.graph.replay(current_stream())
        return self.outputs

    def _capture(self, fn: Any, arena: Any, args: list[Any]) -> tuple[Any, ...]:
        from graphrt.cuda_kernels.graphs import capture
        from graphrt.cuda_kernels.streams import Stream, current_stream

        self.static = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        held: dict[str, Any] = {}

        def body() -> None:
            held["out"] = fn(arena, *self.static)

        try:
            main = current_stream()
            side = Stream.create()
            side.wait_stream(main)  # the capture stream sees everything issued so far
            self.graph = capture(body, stream=side, warmup=1)
        except Exception as exc:  # noqa: BLE001 - fall back to eager, say why
            self.reason = f"capture failed: {type(exc).__name__}: {exc}"
            return fn(arena, *args)
        main.wait_stream(side)
        self.outputs = held["out"]
        for buf, a in zip(self.static, args):
            if isinstance(buf, torch.Tensor):
                buf.copy_(a)
        self.graph.replay(main)
        return self.outputs


def _captured_run(w: _Writer, lowered: "LoweredGraph", run: CapturedRun) -> None:
    """A captured run: its lines go into a function the program's :class:`SegmentGraph` captures and replays."""
    instrs = lowered.instrs[run.start:run.stop]
    defined = {vid for ins in instrs for vid in ins.outs}
    external = list(dict.fromkeys(vid for ins in instrs for vid in ins.ins if vid not in defined))
    inner = _Writer()
    inner.ns, inner.taken, inner.count = w.ns, set(w.taken), w.count
    inner.names = dict(w.names)
    fname = w.const("segment_fn", None)
    params = [inner.names[vid] for vid in external]
    for index, ins in enumerate(instrs, start=run.start):
        args = [inner.use(i, lowered) for i in ins.ins]
        outs = [inner.var(v) for v in ins.node.outputs]
        inner.line(f"{', '.join(outs) or '_'} = {_compute_call(inner, ins, index, args, None)}", ins.node,
                   lowered.graph.name, ins.node.op)
    results = [inner.names[vid] for vid in dict.fromkeys(v for ins in instrs for v in ins.outs)]
    w.count = inner.count
    src = "\n".join([f"def {fname}(_arena, {', '.join(params)}):"] + inner.lines +
                     [f"    return ({', '.join(results)},)"])
    exec(compile(src, f"{_FILENAME}:segment:{lowered.key}:{run.start}", "exec"), w.ns)  # noqa: S102
    for vid, name in inner.names.items():  # the run's values, named as the segment function names them
        if vid in defined:
            w.names[vid] = name
            w.taken.add(name)
    key = w.const("segment_key", (lowered.key, run.start))
    w.line(f"{', '.join(results)}, = _arena.segment({key}).run({fname}, _arena, [{', '.join(params)}])",
           instrs[0].node, lowered.graph.name, f"captured segment {lowered.key or '<top>'}[{run.start}:{run.stop}]")


def _compute_call(w: _Writer, ins: Any, index: int, args: list[str], runner: str | None) -> str:
    arglist = "[" + ", ".join(args) + "]"
    if runner is not None:
        return f"{runner}.compute({index}, {w.const('i', ins)}, {arglist}, _arena)"
    if ins.slot is not None and w.direct is not None:
        w.direct.append(ins)
        return f"_R[{len(w.direct) - 1}]({', '.join(args)})"
    if ins.slot is not None:
        return f"_arena.run({w.const('i', ins)}, {arglist})"
    fn = functools.partial(ins.impl, **ins.attrs) if ins.attrs else ins.impl
    return f"{w.const('f', fn)}({', '.join(args)})"


def _control(w: _Writer, lowered: "LoweredGraph", ins: Any, args: list[str], outs: list[str], target: str) -> None:
    node, gname = ins.node, lowered.graph.name
    if node.op == "forward":
        req = w.const("forward", _forward_builder(node, ins.attrs))
        if ins.attrs["write"] == "none":
            w.line(f"{target} = yield {req}({', '.join(args)})", node, gname, "forward (suspends)")
        else:
            w.line(f"{outs[0]} = yield {req}({', '.join(args)})", node, gname, "forward (suspends)")
            w.line(f"{outs[1]} = {args[0]}")
    elif node.op == "emit":
        em = w.const("emit", functools.partial(emission, node.name))
        w.line(f"_outbox.append({em}({', '.join(args)}))", node, gname, "emit (to the outbox)")
        w.line(f"{target} = {w.const('false', NOT_FINISHED)}")
    elif node.op == "commit":
        cm = w.const("commit", functools.partial(_cache_crop, node.name))
        w.line(f"yield {cm}({args[1]})", node, gname, "commit (suspends: the backbone crops)")
        w.line(f"{target} = {args[0]}")
    elif node.op == "loop":
        body = lowered.regions[id(node.regions[0])]
        carried = [w.var(v) for v in body.graph.inputs]
        cond = w.var(_Named(f"{node.name}_cond"))
        w.line(f"{cond} = {args[0]}", node, gname, f"loop {node.name}")
        if carried:
            w.line(f"{', '.join(carried)}, = {', '.join(args[1:])},")
        w.line(f"while {cond}:", node, gname)
        w.indent += 1
        _region(w, body)
        results = [w.use(i, body) for i in body.outputs]
        w.line(f"{', '.join([cond] + carried)}, = {', '.join(results)},")
        w.indent -= 1
        if outs:
            w.line(f"{target} = {', '.join(carried)}")
    else:
        raise ValueError(f"lowering node '{node.name}': control op '{node.op}' has no lowering")


@dataclass
class _Named:
    """A synthetic value (a loop's condition variable) to name in the generated code."""

    name: str


def _forward_builder(node: Any, attrs: dict[str, Any]) -> Any:
    """``build(cache, tokens, positions, *extra) -> ForwardBatch`` (the request's one row), with constant
    masks/flags cached per length."""
    names = forward_extra_inputs(attrs)
    kind, write, adapter, logits = attrs["attention"], attrs["write"], attrs["adapter"], attrs["logits"]
    cached: dict[tuple[str, int, Any], torch.Tensor] = {}

    def const(what: str, n: int, dev: torch.device) -> torch.Tensor:
        key = (what, n, dev)
        t = cached.get(key)
        if t is None:
            if what == "causal":
                t = causal_mask(n, dev)
            elif what == "bidirectional":
                t = torch.ones(n, n, dtype=torch.bool, device=dev)
            else:
                t = flags(n, what == "true", dev)
            cached[key] = t
        return t

    rows: dict[tuple[int, Any], ForwardBatch] = {}  # one-row batches of the constant fields, per length

    def build(cache: Any, tokens: torch.Tensor, positions: torch.Tensor, *extra: torch.Tensor) -> ForwardBatch:
        n, dev = tokens.shape[0], tokens.device
        if not extra:  # every field but tokens and positions is a constant: reuse its one-row views
            t = rows.get((n, dev))
            if t is None:
                t = rows[(n, dev)] = ForwardBatch.single(
                    -1, tokens, positions, const(kind, n, dev), kind,
                    const("true" if write == "all" else "false", n, dev),
                    const("true" if adapter == "all" else "false", n, dev), logits)
            return ForwardBatch([cache.row], tokens[None], positions[None], t.attention, kind, t.kv_write,
                                t.adapter, t.valid, logits)
        ex = dict(zip(names, extra))
        attention = ex["mask"] if kind == "mask" else const(kind, n, dev)
        kv_write = ex["kv_write"] if write == "mask" else const("true" if write == "all" else "false", n, dev)
        ad = ex["adapter"] if adapter == "mask" else const("true" if adapter == "all" else "false", n, dev)
        return ForwardBatch.single(cache.row, tokens, positions, attention, kind, kv_write, ad, logits)

    return build


def _cache_crop(name: str, length: torch.Tensor) -> CacheCrop:
    return CacheCrop(int(length), name)


def run_generated(step: GeneratedStep, inputs: list[Any], arena: Any, outbox: list[Any],
                  logprobs: bool = True) -> Generator[Any, Any, list[Any]]:
    """Drive ``step.fn`` as the interpreter's generator is driven; failures name the node.

    ``logprobs=False`` skips the nodes only ``emit``'s log-probabilities read
    (:func:`graphrt.analysis.logprob_only_nodes`); the emits then carry none.
    """
    gen = step.fn(*inputs, _arena=arena, _outbox=outbox, _logprobs=logprobs)
    value: Any = None
    first = True
    while True:
        try:
            event = next(gen) if first else gen.send(value)
        except StopIteration as stop:
            return stop.value
        except ExecutionError:
            raise
        except Exception as exc:  # name the failing node, keep the cause
            where = step.node_at(sys.exc_info()[2])
            if where is None:
                raise
            name, op, graph = where
            raise ExecutionError(f"node '{name}' ({op}) in graph '{graph}' failed: "
                                 f"{type(exc).__name__}: {exc}") from exc
        first = False
        try:
            value = yield event
        except GeneratorExit:
            gen.close()
            raise


__all__ = ["CapturedRun", "GeneratedStep", "SegmentGraph", "captured_runs", "generate_step", "run_generated"]
