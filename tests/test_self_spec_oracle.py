"""Self-speculation (linear and quadratic) against independent oracles, on models that accept drafts.

The oracles of ``decode_oracles`` recompute every forward densely from docs/design.md's
definitions; graphrt must match them on tokens, forward counts and accepted
drafts per cycle. The accepting toy backbone makes drafts right with a known
probability, and each configuration first asserts that its cycles accepted every
length 0..b-1, so the equalities with AR cannot pass on cycles that accept nothing.
"""

from __future__ import annotations

from functools import lru_cache

import pytest

import graphrt
from graphrt.api import Model
from support.accepting_backbone import AcceptingBackbone
from support.decode_oracles import (GREEDY, Draws, SpecTrace, ar_oracle, diffusion_oracle, quadratic_oracle, run,
                            self_spec_oracle, tiny_model)

PROMPTS = ([5, 6, 7], [11], [40, 2, 33, 9, 17])
DRAWS = {"t0": GREEDY, "t1": Draws(temperature=1.0, seed=1), "filtered": Draws(1.2, top_k=8, top_p=0.97, seed=3)}
CONFIGS = [(4, 0.85, 36), (8, 0.9, 48)]  # (block length b, draft accuracy, max_new_tokens)


@lru_cache(maxsize=None)
def accepting(b: int, accuracy: float) -> Model:
    """The accepting toy backbone as a model (cached: its rule is pure, its cache rows are reused)."""
    return Model(AcceptingBackbone(block_size=b, accuracy=accuracy), None, f"accepting-{b}")


def params(draws: Draws, n: int) -> dict:
    return dict(max_new_tokens=n, ignore_eos=True, temperature=draws.temperature, top_k=draws.top_k,
                top_p=draws.top_p, seed=draws.seed, stream=draws.stream)


@lru_cache(maxsize=None)
def oracles(b: int, accuracy: float, n: int, draws_name: str) -> list[tuple[list[int], SpecTrace, SpecTrace]]:
    """Per prompt: (AR oracle tokens, linear oracle trace, quadratic oracle trace)."""
    m, d = accepting(b, accuracy), DRAWS[draws_name]
    return [(ar_oracle(m, list(p), n, d), self_spec_oracle(m, list(p), n, b, draws=d),
             quadratic_oracle(m, list(p), n, b, draws=d)) for p in PROMPTS]


def accepted(result: graphrt.GenerationResult) -> list[int]:
    """Accepted drafts per cycle, from graphrt's emit sizes (the first emit is the prefill's seed)."""
    return [k - 1 for k in result.emit_sizes[1:]]


@pytest.mark.parametrize("draws", DRAWS)
@pytest.mark.parametrize("b,accuracy,n", CONFIGS)
def test_oracle_cycles_cover_every_accepted_length(b: int, accuracy: float, n: int, draws: str) -> None:
    traces = oracles(b, accuracy, n, draws)
    for pick in (1, 2):  # linear, quadratic
        seen = sorted({k for t in traces for k in t[pick].accepted})
        assert seen == list(range(b)), f"{'linear' if pick == 1 else 'quadratic'} cycles accepted only {seen}"
    for ar, lin, quad in traces:
        assert lin.tokens == quad.tokens == ar, "the oracles themselves must be lossless"
    if draws != "t0":  # sampling really left the argmax somewhere, or the T > 0 case would be greedy again
        greedy = [ar_oracle(accepting(b, accuracy), list(p), n) for p in PROMPTS]
        assert [t[0] for t in traces] != greedy


# Forwards per mode from the accepted drafts: linear is prefill + (draft + verify) per cycle; quadratic is one
# forward per cycle, the first one included.
FORWARDS = {"self-spec": lambda acc: 1 + 2 * len(acc), "self-spec-quadratic": lambda acc: 1 + len(acc)}


@pytest.mark.parametrize("draws", DRAWS)
@pytest.mark.parametrize("b,accuracy,n", CONFIGS)
@pytest.mark.parametrize("mode", ["self-spec", "self-spec-quadratic"], ids=["linear", "quadratic"])
def test_self_spec_equals_oracle_and_ar(mode: str, b: int, accuracy: float, n: int, draws: str) -> None:
    m = accepting(b, accuracy)
    for prompt, (ar, lin, quad) in zip(PROMPTS, oracles(b, accuracy, n, draws)):
        want = lin if mode == "self-spec" else quad
        got = run(m, list(prompt), mode, **params(DRAWS[draws], n))
        assert got.tokens == ar, f"{mode} != AR for prompt {prompt}"
        assert (got.forwards, accepted(got)) == (want.forwards, want.accepted)
        assert got.forwards == FORWARDS[mode](want.accepted)


@pytest.mark.parametrize("draws", ["t0", "t1"])
def test_ar_equals_oracle_on_the_accepting_backbone(draws: str) -> None:
    b, accuracy, n = CONFIGS[0]
    for prompt, (ar, _, _) in zip(PROMPTS, oracles(b, accuracy, n, draws)):
        got = run(accepting(b, accuracy), list(prompt), "ar", **params(DRAWS[draws], n))
        assert got.tokens == ar and got.forwards == n


@pytest.mark.parametrize("draws", ["t0", "t1"])
def test_iterated_draft_equals_oracle(draws: str) -> None:
    """Draft threshold 0.99 (above the toy's confidence): several draft forwards per cycle, each counted."""
    m, d, n = accepting(5, 0.6), DRAWS[draws], 30
    for prompt in PROMPTS[:2]:
        want = self_spec_oracle(m, list(prompt), n, 5, threshold=0.99, draws=d)
        got = run(m, list(prompt), "self-spec", block_length=5, threshold=0.99, **params(d, n))
        assert got.tokens == want.tokens == ar_oracle(m, list(prompt), n, d)
        assert (got.forwards, accepted(got)) == (want.forwards, want.accepted)
        assert got.forwards > 1 + 2 * len(want.accepted)  # some cycles needed more than one draft forward


@pytest.mark.parametrize("draws", ["t0", "t1"])
def test_random_model_with_draft_adapter_equals_oracles(draws: str) -> None:
    """A transformer whose draft adapter changes the mask predictions: the oracles' adapter flags match."""
    m, d, n = tiny_model(seed=2, draft_adapter={"rank": 4, "alpha": 16}), DRAWS[draws], 11
    for b in (1, 3):
        lin = self_spec_oracle(m, [7, 8, 9], n, b, draws=d)
        quad = quadratic_oracle(m, [7, 8, 9], n, b, draws=d)
        got_lin = run(m, [7, 8, 9], "self-spec", block_length=b, **params(d, n))
        got_quad = run(m, [7, 8, 9], "self-spec-quadratic", block_length=b, **params(d, n))
        assert got_lin.tokens == got_quad.tokens == lin.tokens == quad.tokens == ar_oracle(m, [7, 8, 9], n, d)
        assert (got_lin.forwards, accepted(got_lin)) == (lin.forwards, lin.accepted)
        assert (got_quad.forwards, accepted(got_quad)) == (quad.forwards, quad.accepted)


@pytest.mark.parametrize("draws", ["t0", "filtered"])
def test_mixed_mode_session_equals_oracles(draws: str) -> None:
    """All four modes in one session (packed calls), each request equal to its solo oracle."""
    b, accuracy, n = CONFIGS[0]
    m, d = accepting(b, accuracy), DRAWS[draws]
    traces = oracles(b, accuracy, n, draws)
    session = graphrt.Session(m.backbone)
    reqs = []
    for i, prompt in enumerate(PROMPTS):
        for mode in ("self-spec", "self-spec-quadratic"):
            rid = session.add(graphrt.compile(mode, m), list(prompt), graphrt.GenerationParams(**params(d, n)))
            reqs.append((rid, mode, i))
    ar_id = session.add(graphrt.compile("ar", m), list(PROMPTS[0]), graphrt.GenerationParams(**params(d, n)))
    diff_id = session.add(graphrt.compile("diffusion", m, threshold=0.5), [3, 1, 4],
                          graphrt.GenerationParams(max_new_tokens=12, ignore_eos=True))
    results = session.run()
    for rid, mode, i in reqs:
        ar, lin, quad = traces[i]
        want = lin if mode == "self-spec" else quad
        assert results[rid].tokens == ar, f"{mode} in a mixed session != AR for prompt {PROMPTS[i]}"
        assert (results[rid].forwards, accepted(results[rid])) == (want.forwards, want.accepted)
    assert results[ar_id].tokens == traces[0][0]
    assert (results[diff_id].tokens, results[diff_id].forwards) == diffusion_oracle(m, [3, 1, 4], 12, b, 0.5)
    assert sorted({k for rid, _, _ in reqs for k in accepted(results[rid])}) == list(range(b))
    assert session.backbone_calls < sum(r.forwards for r in results.values())  # calls really were shared


@pytest.mark.parametrize("draws", ["t0", "t1"])
def test_eos_stops_every_causal_mode_where_ar_stops(draws: str) -> None:
    """With an EOS that AR emits mid-way, each mode stops there; forwards as the oracles count them."""
    b, accuracy, n = CONFIGS[0]
    d, prompt = DRAWS[draws], list(PROMPTS[0])
    free = oracles(b, accuracy, n, draws)[0][0]
    eos = free[15]
    m = Model(AcceptingBackbone(block_size=b, accuracy=accuracy, eos_token_id=eos), None, "accepting-eos")
    stop = dict(params(d, n), ignore_eos=False)
    want = free[: free.index(eos) + 1]
    assert run(m, prompt, "ar", **stop).tokens == want
    for mode, oracle in (("self-spec", self_spec_oracle), ("self-spec-quadratic", quadratic_oracle)):
        trace = oracle(m, prompt, n, b, draws=d, stop_at_eos=True)
        got = run(m, prompt, mode, **stop)
        assert got.tokens == trace.tokens == want and got.finish_reason == "stop"
        assert (got.forwards, accepted(got)) == (trace.forwards, trace.accepted)
