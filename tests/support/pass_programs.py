"""Random pure graphs and policy runners for the pass tests.

:func:`pure_programs` draws small graphs built from the library's decode
chains (the ones fusion must recognise) mixed with constant/shape arithmetic,
duplicates, dead code and pure loops, plus inputs with ties, -inf and NaN.
:func:`evaluate` runs a graph to completion with the executor; :func:`same`
compares results bit for bit; :func:`run_session` runs requests in one session,
lowered or interpreted.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any, Callable

import torch
from hypothesis import strategies as st

import graphrt
from graphrt import noise
from graphrt.builder import GraphBuilder, Var
from graphrt.compiled import CompiledPolicy
from graphrt.executor import LoweredGraph, Program
from graphrt.ir import Graph
from graphrt.library import accept_length, ban_mask, confidence, denoise_select, sample_tokens, token_logprobs
from graphrt.passes import (assign_streams, canonicalize, copy_graph, eliminate_common_subexpressions,
                            eliminate_dead_code, fold_constants, fuse, hoist_invariants, plan_capture, plan_memory,
                            remove_dead_carried)
from graphrt.policy import Policy
from graphrt.verify import verify

MASK = 0
SINGLE_PASSES: dict[str, Callable[[Graph], Any]] = {
    "canonicalize": canonicalize, "fold_constants": fold_constants, "hoist_invariants": hoist_invariants,
    "cse": eliminate_common_subexpressions, "fuse": fuse, "remove_dead_carried": remove_dead_carried,
    "dce": eliminate_dead_code, "plan_memory": plan_memory, "assign_streams": assign_streams,
    "plan_capture": plan_capture,
}
"""Every semantics-preserving pass, runnable alone on a graph as built."""


# ----------------------------------------------------------------------------- comparing and running

def same(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of tensors (floats compared as bits: NaN == NaN, -0.0 != 0.0)."""
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        return a == b
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.float64:
        return torch.equal(a.view(torch.int64), b.view(torch.int64))
    return torch.equal(a, b)


def evaluate(graph: Graph, inputs: dict[str, Any], steps: int = 1) -> list[Any]:
    """Run a pure graph ``steps`` times with one :class:`Program` per run; the last run's outputs (cloned)."""
    lowered = LoweredGraph(graph, torch.device("cpu"))
    outputs: list[Any] = []
    for _ in range(steps):
        prog = Program(lowered, inputs)
        assert prog.start() is None, "a pure graph must not suspend"
        outputs = [o.clone() if isinstance(o, torch.Tensor) else o for o in prog.outputs or []]
    return outputs


def compiled(graph: Graph, reference: Graph, name: str = "custom") -> CompiledPolicy:
    """A :class:`CompiledPolicy` that runs ``graph`` (already built and transformed)."""
    return CompiledPolicy(Policy(name, lambda config: reference), graph, reference, 8, 1, [])


def generate(model: Any, graph: Graph, reference: Graph, prompt: list[int], **params: Any) -> graphrt.GenerationResult:
    """``graphrt.generate`` with a given graph."""
    return graphrt.generate(model, prompt, mode=compiled(graph, reference), ignore_eos=True, **params)


def random_order(graph: Graph, rng: random.Random) -> Graph:
    """A copy of ``graph`` whose regions run in a random order allowed by its stream schedule."""
    from graphrt.passes.graph_utils import regions_with_keys

    out = copy_graph(graph)
    sched = out.annotations["streams"]
    for key, region in regions_with_keys(out):
        rs = sched.regions[key]
        succ: dict[str, list[str]] = {n: [] for n in rs.order}
        indeg = {n: 0 for n in rs.order}
        for u, v in rs.constraints():
            succ[u].append(v)
            indeg[v] += 1
        ready = [n for n in rs.order if indeg[n] == 0]
        order: list[str] = []
        while ready:
            n = ready.pop(rng.randrange(len(ready)))
            order.append(n)
            for m in succ[n]:
                indeg[m] -= 1
                if indeg[m] == 0:
                    ready.append(m)
        assert len(order) == len(rs.order), "stream constraints have a cycle"
        by_name = {n.name: n for n in region.nodes}
        region.nodes = [by_name[n] for n in order]
    return verify(out)


# ----------------------------------------------------------------------------- random pure programs

@st.composite
def pure_programs(draw: st.DrawFn) -> tuple[Graph, dict[str, Any]]:
    """A random pure graph (no forward/emit) over the library chains, with matching inputs."""
    V = draw(st.integers(2, 7))
    n = draw(st.integers(1, 5))
    b = GraphBuilder("random")
    io = SimpleNamespace(
        seed=b.input("seed", graphrt.types.scalar("i64")), stream=b.input("stream", graphrt.types.scalar("i64")),
        temperature=b.input("temperature", graphrt.types.scalar("float")),
        top_k=b.input("top_k", graphrt.types.scalar("i64")), top_p=b.input("top_p", graphrt.types.scalar("float")))
    logits = b.input("logits", graphrt.types.tensor("float", n, "V"))
    block = b.input("block", graphrt.types.tensor("i64", n))
    k_dyn = b.input("k", graphrt.types.scalar("i64"))
    start = b.input("start", graphrt.types.scalar("i64"))
    pool: list[Var] = []
    kinds = draw(st.lists(st.sampled_from(CHAINS), min_size=1, max_size=6))
    for kind in kinds:
        pool.extend(_chain(kind, b, io, logits, block, k_dyn, start, n, draw))
    outs = draw(st.lists(st.sampled_from(range(len(pool))), min_size=1, max_size=4, unique=True))
    graph = b.build([pool[i] for i in outs])
    inputs = {
        "seed": torch.tensor(draw(st.integers(0, 2**40))), "stream": torch.tensor(draw(st.integers(0, 3))),
        "temperature": torch.tensor(draw(st.sampled_from([0.0, 0.5, 1.0, 1.7])), dtype=torch.float64),
        "top_k": torch.tensor(draw(st.sampled_from([0, 1, 2, V]))),
        "top_p": torch.tensor(draw(st.sampled_from([1.0, 0.6])), dtype=torch.float64),
        "logits": _logits(draw, n, V), "block": _block(draw, n, V), "k": torch.tensor(draw(st.integers(-1, n + 1))),
        "start": torch.tensor(draw(st.integers(0, 50))),
    }
    return graph, inputs


def _logits(draw: st.DrawFn, n: int, V: int) -> torch.Tensor:
    vals = draw(st.lists(st.sampled_from([-2.0, -0.5, 0.0, 0.5, 1.0, 3.0, float("-inf"), float("nan")]),
                         min_size=n * V, max_size=n * V))
    return torch.tensor(vals, dtype=torch.float64).reshape(n, V)


def _block(draw: st.DrawFn, n: int, V: int) -> torch.Tensor:
    return torch.tensor(draw(st.lists(st.integers(0, V - 1), min_size=n, max_size=n)), dtype=torch.int64)


CHAINS = ("sample", "sample_row", "confidence", "denoise_threshold", "denoise_count", "accept", "logprobs",
          "shape_arith", "duplicate", "loop")


def _chain(kind: str, b: GraphBuilder, io: Any, logits: Var, block: Var, k_dyn: Var, start: Var, n: int,
           draw: st.DrawFn) -> list[Var]:
    positions = b.arange(start, length=n)
    banned = ban_mask(b, logits, MASK)
    if kind == "sample":
        return [sample_tokens(b, banned, positions, io, purpose=draw(st.sampled_from([noise.SAMPLE, noise.DENOISE])))]
    if kind == "sample_row":
        return [sample_tokens(b, banned[-1], start + 1, io)]
    if kind == "confidence":
        return [confidence(b, logits, sample_tokens(b, banned, positions, io))]
    if kind in ("denoise_threshold", "denoise_count"):
        cand = sample_tokens(b, banned, positions, io, purpose=noise.DENOISE)
        conf = confidence(b, banned, cand)
        if kind == "denoise_threshold":
            return [denoise_select(b, block, cand, conf, MASK, draw(st.sampled_from([0.0, 0.3, 0.9, 1.0])))]
        count = draw(st.sampled_from(["const", "dynamic"]))
        c = b.const(draw(st.integers(0, n))) if count == "const" else b.cast(k_dyn < 2, dtype="i64") + 1
        return [denoise_select(b, block, cand, conf, MASK, None, c)]
    if kind == "accept":
        return [accept_length(b, block, sample_tokens(b, banned, positions + 1, io))]
    if kind == "logprobs":
        return [token_logprobs(b, logits, block)]
    if kind == "shape_arith":
        size = b.size(block)
        arith = (size + 2) * 3 - b.const(1)
        cond = b.const(draw(st.booleans()), "bool")
        picked = b.where(cond, arith, k_dyn)
        full = block[0:n]
        dead = b.cast(~(~(block == 1)), dtype="i64")  # a dead identity chain for canonicalize/DCE
        del dead
        return [picked, b.where(block == block, full, block), b.arange_like(block, size)]
    if kind == "duplicate":
        first = sample_tokens(b, banned, positions, io)
        second = sample_tokens(b, ban_mask(b, logits, MASK), b.arange(start, length=n), io)
        return [first + second]
    return _loop(b, io, banned, block, k_dyn, positions, n, draw)


def _loop(b: GraphBuilder, io: Any, banned: Var, block: Var, k_dyn: Var, positions: Var, n: int,
          draw: st.DrawFn) -> list[Var]:
    """A pure loop: a few denoise steps over fixed logits, an unused counter, an invariant inside."""
    limit = draw(st.integers(0, 3))
    threshold = draw(st.sampled_from([0.5, 1.0, None]))

    def body(blk: Var, i: Var, junk: Var) -> tuple[Var, ...]:
        cand = sample_tokens(b, banned, positions, io, purpose=noise.DENOISE)
        conf = confidence(b, banned, cand)
        count = b.const(1) if threshold is None else None
        nxt = denoise_select(b, blk, cand, conf, MASK, threshold, count)
        return i + 1 < limit, nxt, i + 1, junk * 2

    first = b.const(limit > 0, "bool") if draw(st.booleans()) else k_dyn < limit
    blk, _, _ = b.loop(first, [block, b.const(0), k_dyn], body, name="steps")
    return [blk]


def run_session(model: graphrt.Model, monkeypatch: Any, interpret: bool,
                requests: list[tuple[str, list[int], dict[str, Any]]]) -> list[graphrt.GenerationResult]:
    """The results of ``requests`` ``(mode, prompt, params)`` decoded together in one session, by the
    lowered step or (``interpret``) the interpreter, in request order."""
    monkeypatch.setenv("GRAPHRT_INTERPRET", "1" if interpret else "0")
    session = graphrt.Session(model.backbone)
    ids = [session.add(graphrt.compile(mode, model), prompt, graphrt.GenerationParams(**params))
           for mode, prompt, params in requests]
    results = session.run()
    return [results[i] for i in ids]
