"""Each clean-up pass and each fusion pattern on small hand-built graphs (what changes, what must not)."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphrt import noise
from graphrt.backbone import BackboneConfig
from graphrt.builder import GraphBuilder
from graphrt.frontends import policies
from graphrt.library import accept_length, confidence, denoise_select, sample_tokens
from graphrt.passes import (canonicalize, default_pipeline, eliminate_common_subexpressions, eliminate_dead_code,
                            fold_constants, fuse, hoist_invariants, remove_dead_carried)
from graphrt.types import CACHE, scalar, tensor
from graphrt.verify import verify
from support.pass_programs import evaluate, same

CONFIG = BackboneConfig(vocab_size=96, max_positions=256, mask_token_id=95, bos_token_id=1, eos_token_id=2,
                        block_size=4)


def ops(graph) -> list[str]:
    return [n.op for n in graph.walk()]


class _IO:
    def __init__(self, b: GraphBuilder) -> None:
        self.seed, self.stream = b.input("seed", scalar("i64")), b.input("stream", scalar("i64"))
        self.temperature = b.input("temperature", scalar("float"))
        self.top_k, self.top_p = b.input("top_k", scalar("i64")), b.input("top_p", scalar("float"))


def _io_inputs(temperature: float = 0.0, seed: int = 7) -> dict[str, torch.Tensor]:
    return {"seed": torch.tensor(seed), "stream": torch.tensor(0),
            "temperature": torch.tensor(temperature, dtype=torch.float64), "top_k": torch.tensor(0),
            "top_p": torch.tensor(1.0, dtype=torch.float64)}


# ----------------------------------------------------------------------------- clean-up passes

def test_canonicalize_moves_constants_right_and_drops_identities() -> None:
    b = GraphBuilder("g")
    x = b.input("x", tensor("i64", 3))
    y = b.add(b.const(1), x)
    c = b.lt(b.const(0), y)
    out = b.where(~~c, b.cast(y, dtype="i64"), x[0:3])
    g = b.build([out, x * 1 + 0, b.concat(x)])
    r = canonicalize(g)
    assert r.changed and r.info["swapped"] == 2
    nodes = {n.op: n for n in r.graph.nodes}
    assert "cast" not in nodes and "slice" not in nodes and "concat" not in nodes
    assert nodes["where"].inputs[0] is nodes["gt"].outputs[0]  # not(not(c)) -> c; the dead inner not is DCE's
    assert nodes["gt"].inputs[1].producer.op == "constant"
    assert "not" not in ops(eliminate_dead_code(r.graph).graph)
    inputs = {"x": torch.tensor([-1, 0, 5])}
    assert same(evaluate(r.graph, inputs), evaluate(g, inputs))
    assert canonicalize(r.graph).changed is False and canonicalize(r.graph).graph is r.graph


def test_fold_constants_evaluates_shape_arithmetic_and_constant_branches() -> None:
    b = GraphBuilder("g")
    x, y = b.input("x", tensor("float", 4)), b.input("y", tensor("float", 4))
    n = (b.size(b.fill(length=3, value=9)) + 1) * 2           # 8, from a static shape
    picked = b.where(b.const(True, "bool"), x, y)            # the true branch
    ar = b.arange_like(x, n)                                 # static length -> arange
    window = b.dynamic_slice(x, b.const(1), length=2)        # constant start -> slice
    g = b.build([n, picked, ar, window, b.any(b.fill(length=3, value=0, dtype="bool"))])
    r = fold_constants(g)
    out = r.graph
    assert out.outputs[0].producer.op == "constant" and out.outputs[0].producer.attrs["value"] == 8
    assert out.outputs[1] is out.inputs[0]
    assert out.outputs[2].producer.op == "arange" and out.outputs[3].producer.op == "slice"
    assert out.outputs[4].producer.op == "constant" and out.outputs[4].producer.attrs["value"] is False
    inputs = {"x": torch.arange(4.0, dtype=torch.float64), "y": -torch.ones(4, dtype=torch.float64)}
    assert same(evaluate(out, inputs), evaluate(g, inputs))


def test_fold_constants_removes_a_loop_that_never_runs_and_keeps_raising_nodes() -> None:
    b = GraphBuilder("g")
    x = b.input("x", tensor("i64", 3))
    (never,) = b.loop(b.const(False, "bool"), [x], lambda v: (b.const(True, "bool"), v + 1))
    bad = b.dynamic_slice(b.fill(length=2, value=1), b.const(5), length=2)  # out of bounds: stays, raises at run time
    g = b.build([never, bad])
    out = fold_constants(g).graph
    assert "loop" not in ops(out) and out.outputs[0] is out.inputs[0]
    assert "dynamic_slice" in ops(out)


def test_hoist_moves_invariant_total_nodes_out_of_nested_loops_only() -> None:
    b = GraphBuilder("g")
    t = b.input("t", scalar("float"))
    x = b.input("x", tensor("i64", 3))

    def inner(v):
        inv = b.maximum(t, 1e-30)                      # invariant in both loops: leaves both
        idx = b.gather(x, b.const(0))                  # invariant but may raise: stays
        return b.const(False, "bool"), v + b.cast(inv > 0.0, dtype="i64") + idx

    def outer(v):
        (w,) = b.loop(b.const(True, "bool"), [v], inner)
        return b.const(False, "bool"), w

    (res,) = b.loop(b.const(True, "bool"), [b.const(0)], outer)
    g = b.build([res])
    out = hoist_invariants(g).graph
    top = [n.op for n in out.nodes]
    assert "maximum" in top and "gather" not in top
    inner_body = out.nodes[-1].regions[0].nodes[-1].regions[0]
    assert "gather" in [n.op for n in inner_body.nodes] and "maximum" not in [n.op for n in inner_body.nodes]
    inputs = {"t": torch.tensor(0.5, dtype=torch.float64), "x": torch.tensor([4, 5, 6])}
    assert same(evaluate(out, inputs), evaluate(g, inputs))


def test_cse_merges_within_scopes_never_across_sibling_regions() -> None:
    b = GraphBuilder("g")
    x = b.input("x", tensor("i64", 3))
    a1, a2 = x + 1, x + 1                              # same scope: merge
    seen = {}

    def body(v, tag):
        inner = x + 1                                  # may reuse the outer x + 1
        own = v * 3                                    # reads the body input: stays in its region
        seen[tag] = own
        return b.const(False, "bool"), own + inner

    (l1,) = b.loop(b.const(True, "bool"), [x], lambda v: body(v, 1))
    (l2,) = b.loop(b.const(True, "bool"), [x], lambda v: body(v, 2))
    g = b.build([a1, a2, l1, l2])
    r = eliminate_common_subexpressions(g)
    out = r.graph
    assert out.outputs[0] is out.outputs[1]
    loops = [n for n in out.nodes if n.op == "loop"]
    for loop in loops:
        assert [n.op for n in loop.regions[0].nodes].count("mul") == 1  # each body keeps its own v * 3
        assert "add" in [n.op for n in loop.regions[0].nodes]           # own + inner
    assert r.info["merged"] == 3 + 4  # a2, two inner x + 1, constants (3 in bodies + 1 at top)
    inputs = {"x": torch.tensor([1, 2, 3])}
    assert same(evaluate(out, inputs), evaluate(g, inputs))


def test_dce_keeps_effects_and_loops_holding_them() -> None:
    b = GraphBuilder("g")
    prompt, cache = b.input("prompt", tensor("i64", "P")), b.input("cache", CACHE)
    logits, cache2 = b.forward(cache, prompt, b.arange_like(prompt, 0))
    _unused = b.softmax(logits)                        # dead and pure: removed
    done = b.emit(prompt, 1)

    def step(c):
        n2 = b.noise(b.const(0), b.const(0), b.arange(b.const(0), length=1),
                     b.fill(length=2, value=0.0, dtype="float").unsqueeze())
        del n2                                         # dead noise: removed
        d = b.emit(prompt, 1)
        return ~d, c

    b.loop(~done, [cache2], step)                      # results unused, but it emits: kept
    g = b.build()
    out = eliminate_dead_code(g).graph
    assert ops(out).count("emit") == 2 and "forward" in ops(out) and "loop" in ops(out)
    assert "softmax" not in ops(out) and "noise" not in ops(out)


def test_remove_dead_carried_drops_a_counter_nobody_reads() -> None:
    graph = policies.build_diffusion(CONFIG, block_length=4, threshold=0.9)
    r = remove_dead_carried(graph)
    assert r.changed and r.info["carried_removed"] == 1
    denoise = [n for n in r.graph.walk() if n.op == "loop"][1]
    assert len(denoise.inputs) == 2 and len(denoise.regions[0].inputs) == 1
    verify(r.graph)
    schedule = policies.build_diffusion(CONFIG, block_length=4, threshold=None, steps=2)
    assert not remove_dead_carried(schedule).changed   # the step counter drives the schedule: kept


# ----------------------------------------------------------------------------- fusion

def _fusion_graph(kind: str, threshold: float | None = 0.5):
    b = GraphBuilder("f")
    io = _IO(b)
    logits = b.input("logits", tensor("float", 3, "V"))
    block = b.input("block", tensor("i64", 3))
    positions = b.arange(b.const(10), length=3)
    cand = sample_tokens(b, logits, positions, io, purpose=noise.DENOISE)
    if kind == "sample":
        return b.build([cand])
    conf = confidence(b, logits, cand)
    if kind == "confidence":
        return b.build([conf])
    if kind == "denoise":
        count = None if threshold is not None else b.const(2)
        return b.build([denoise_select(b, block, cand, conf, 0, threshold, count)])
    return b.build([accept_length(b, block, cand)])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["sample", "confidence", "denoise", "denoise-count", "accept"]),
       temperature=st.sampled_from([0.0, 1e-40, 0.7, 2.0]), seed=st.integers(0, 2**40),
       values=st.lists(st.sampled_from([-1.0, 0.0, 0.0, 2.0, float("-inf"), float("nan")]), min_size=15,
                       max_size=15),
       block=st.lists(st.integers(0, 4), min_size=3, max_size=3), threshold=st.sampled_from([0.0, 0.4, 1.0]))
def test_fused_ops_equal_the_chains_they_replace(kind: str, temperature: float, seed: int, values: list[float],
                                                 block: list[int], threshold: float) -> None:
    g = _fusion_graph("denoise" if kind == "denoise-count" else kind, None if kind == "denoise-count" else threshold)
    fused = fuse(g).graph
    want = {"sample": "sample", "confidence": "confidence", "denoise": "denoise_select",
            "denoise-count": "denoise_select", "accept": "verify_accept"}[kind]
    assert fused.outputs[0].producer.op == want
    inputs = dict(_io_inputs(temperature, seed), logits=torch.tensor(values, dtype=torch.float64).reshape(3, 5),
                  block=torch.tensor(block))
    assert same(evaluate(fused, inputs), evaluate(g, inputs))


def test_near_misses_are_not_fused() -> None:
    b = GraphBuilder("f")
    io = _IO(b)
    logits = b.input("logits", tensor("float", "V"))
    x = b.clean(logits)
    scaled = x / b.maximum(io.temperature, 1e-20)      # a different epsilon: not the sample chain
    neg = b.const(float("-inf"), "float")
    kept = b.where(b.topk(scaled, io.top_k), scaled, neg)
    kept = b.where(b.top_p(kept, io.top_p), kept, neg)
    g = b.noise(io.seed, io.stream, b.const(3), kept)
    tok = b.where(io.temperature > 0.0, b.argmax(kept + g), b.argmax(logits))
    wrong_root = b.gather(b.softmax(logits), tok)      # confidence without clean: not fused
    graph = b.build([tok, wrong_root])
    assert not fuse(graph).changed


def test_pipeline_fuses_every_builtin_mode_and_drops_the_noise() -> None:
    expect = {"ar": {"sample": 2}, "diffusion": {"sample": 3, "confidence": 1, "denoise_select": 1},
              "self-spec": {"sample": 3, "confidence": 1, "denoise_select": 1, "verify_accept": 1}}
    for mode, counts in expect.items():
        graph = policies.policy_for_mode(mode).build(CONFIG)
        result = default_pipeline(1).run(graph)
        fuse_entry = next(r for r in result.report if r["pass"] == "fuse")
        assert fuse_entry["info"] == dict(sorted(counts.items())), mode
        final = ops(result.graph)
        assert "noise" not in final and "topk" not in final and "top_p" not in final, mode
        assert "noise" in ops(graph)
