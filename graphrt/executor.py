"""The executor: a graph run per request as a resumable program.

:class:`Program` interprets a verified graph with each op's implementation
(the registry's torch reference on CPU; a CUDA kernel where one is registered
for CUDA tensors, chosen in :func:`resolve_impl`). It runs until it reaches a
``forward`` and suspends with a :class:`ForwardRequest`; the caller resumes it
with the logits. ``emit`` suspends with an :class:`EmitRequest`; the caller
answers whether the request is finished. ``loop`` regions run as nested,
equally resumable interpretations, so a program is a Python generator all the
way down and there is no second, run-to-completion interpreter.

Failures name the node: :class:`ExecutionError` says which node of which graph
failed and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generator

import torch

from graphrt.ir import Graph, Node
from graphrt.ops import forward_extra_inputs
from graphrt.registry import get_op


class ExecutionError(RuntimeError):
    """An op failed at run time; the message names the node."""


@dataclass
class ForwardRequest:
    """A suspended ``forward``: what the backbone must compute for one request.

    Shapes: ``tokens``, ``positions``, ``kv_write``, ``adapter`` are ``[L]``;
    ``attention`` is ``[L, L]`` bool over the new tokens (the cached prefix is
    always visible).
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    attention: torch.Tensor
    kind: str
    kv_write: torch.Tensor
    adapter: torch.Tensor
    node: str


@dataclass
class EmitRequest:
    """A suspended ``emit``: tokens (and their log-probs) handed to the caller."""

    tokens: torch.Tensor
    logprobs: torch.Tensor | None
    node: str


@dataclass
class CommitRequest:
    """A suspended ``commit``: the caller crops the request's cache to ``length``."""

    length: int
    node: str


@dataclass
class CacheHandle:
    """Run-time value of a ``cache`` typed SSA value: the request's cache row."""

    row: int


Event = ForwardRequest | EmitRequest | CommitRequest
Impl = Callable[..., Any]


def resolve_impl(op: str, device: torch.device, kernels: str = "auto") -> Impl:
    """The implementation of ``op`` for tensors on ``device`` (the one dispatch point).

    ``kernels``: ``"auto"`` uses :mod:`graphrt.cuda_kernels` for CUDA devices where it
    has a kernel for the op; ``"simulator"`` uses those kernels on CPU tensors in
    Numba's CUDA simulator (tests); ``"off"`` always runs the registry's torch reference.
    """
    if kernels not in ("auto", "simulator", "off"):
        raise ValueError(f"resolve_impl: kernels expected 'auto', 'simulator' or 'off', found {kernels!r}")
    if kernels == "simulator" or (kernels == "auto" and device.type == "cuda"):
        try:
            from graphrt.cuda_kernels.op_adapters import op_impl
        except ImportError:  # CUDA extra not installed: the references run on the GPU through torch
            op_impl = None
        if op_impl is not None:
            impl = op_impl(op, device, simulator=kernels == "simulator")
            if impl is not None:
                return impl
    ref = get_op(op).reference
    assert ref is not None, f"op '{op}' has no reference"
    return ref


def causal_mask(n: int, device: torch.device | None = None) -> torch.Tensor:
    """``[n, n]`` lower-triangular bool mask."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


@dataclass
class _Instr:
    node: Node
    impl: Impl | None
    attrs: dict[str, Any]
    ins: list[int]
    outs: list[int]


class LoweredGraph:
    """A graph prepared for interpretation: attributes resolved, implementations bound."""

    def __init__(self, graph: Graph, device: torch.device, kernels: str = "auto") -> None:
        self.graph = graph
        self.inputs = [id(v) for v in graph.inputs]
        self.outputs = [id(v) for v in graph.outputs]
        self.instrs: list[_Instr] = []
        self.regions: dict[int, LoweredGraph] = {}
        for node in graph.nodes:
            opdef = get_op(node.op)
            attrs = opdef.resolve_attrs(node.attrs, f"node '{node.name}'")
            impl = None if opdef.tier == "control" else resolve_impl(node.op, device, kernels)
            self.instrs.append(_Instr(node, impl, attrs, [id(v) for v in node.inputs], [id(v) for v in node.outputs]))
            for region in node.regions:
                self.regions[id(region)] = LoweredGraph(region, device, kernels)


class Program:
    """One request's run of a lowered graph, resumable at ``forward`` and ``emit``.

    >>> # prog = Program(lowered, {"prompt": ids, ...}); ev = prog.start(); ev = prog.resume(logits)
    """

    def __init__(self, lowered: LoweredGraph, inputs: dict[str, Any]) -> None:
        names = [v.name for v in lowered.graph.inputs]
        missing = [n for n in names if n not in inputs]
        extra = [n for n in inputs if n not in names]
        if missing or extra:
            raise ValueError(f"graph '{lowered.graph.name}' inputs: expected {names}, "
                             f"missing {missing}, unexpected {extra}")
        env = {vid: inputs[v.name] for vid, v in zip(lowered.inputs, lowered.graph.inputs)}
        self._gen = _run(lowered, env)
        self.finished = False

    def start(self) -> Event | None:
        """Run to the first suspension; ``None`` if the graph finished without one."""
        return self._advance(None, first=True)

    def resume(self, value: Any) -> Event | None:
        """Resume with logits (after a forward), the finished flag (after an emit), ``None`` (after a commit)."""
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
        except StopIteration:
            self.finished = True
            return None


def _run(lowered: LoweredGraph, env: dict[int, Any]) -> Generator[Event, Any, list[Any]]:
    for ins in lowered.instrs:
        node = ins.node
        args = [env[i] for i in ins.ins]
        try:
            if ins.impl is not None:
                result = ins.impl(*args, **ins.attrs)
            elif node.op == "forward":
                result = yield from _forward(node, args, ins.attrs)
            elif node.op == "emit":
                result = yield from _emit(node, args)
            elif node.op == "commit":
                result = yield from _commit(node, args)
            elif node.op == "loop":
                result = yield from _loop(lowered.regions[id(node.regions[0])], args, env)
            else:
                raise ExecutionError(f"node '{node.name}': control op '{node.op}' has no interpreter")
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
    return [env[i] for i in lowered.outputs]


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
    write = {"all": torch.ones(n, dtype=torch.bool, device=dev), "none": torch.zeros(n, dtype=torch.bool, device=dev)}
    kv_write = extra["kv_write"] if attrs["write"] == "mask" else write[attrs["write"]]
    adapter = extra["adapter"] if attrs["adapter"] == "mask" else write["all" if attrs["adapter"] == "all" else "none"]
    logits = yield ForwardRequest(tokens, positions, attention, attrs["attention"], kv_write, adapter, node.name)
    if attrs["write"] == "none":
        return logits
    return logits, cache


def _emit(node: Node, args: list[Any]) -> Generator[Event, Any, Any]:
    tokens = args[0]
    count = int(args[1]) if len(args) > 1 else tokens.shape[0]
    logprobs = args[2][:count] if len(args) > 2 else None
    done = yield EmitRequest(tokens[:count], logprobs, node.name)
    return torch.tensor(bool(done))


def _commit(node: Node, args: list[Any]) -> Generator[Event, Any, Any]:
    cache, length = args
    yield CommitRequest(int(length), node.name)
    return cache


def _loop(body: LoweredGraph, args: list[Any], outer: dict[int, Any]) -> Generator[Event, Any, Any]:
    cond, carried = args[0], list(args[1:])
    # Values are SSA and uniquely named, so the body may bind into the enclosing
    # environment directly: each iteration rebinds the same names.
    while bool(cond):
        outer.update(zip(body.inputs, carried))
        results = yield from _run(body, outer)
        cond, carried = results[0], results[1:]
    if len(carried) == 1:
        return carried[0]
    return tuple(carried)
