"""The shipped model in float64 on held-out prompts: self-speculation equals AR where drafts are accepted.

Random tiny models accept almost no drafts; the shipped model does. The prompts
follow ``graphrt eval``'s held-out rule (:func:`graphrt.frontends.training.evaluate.make_prompts`).
Each configuration first asserts that its cycles accepted every length 0..b-1,
then that self-spec and self-spec-quadratic equal AR token for token, at T = 0
and at T > 0 with the same seed, per mode (one session per mode) and in one
mixed-mode session; two prompts are also compared with the dense oracles.
"""

from __future__ import annotations

import pytest

import graphrt
from graphrt.frontends.training.evaluate import make_prompts
from support.decode_oracles import Draws, quadratic_oracle, run, self_spec_oracle

B = 4            # block length: the shipped model accepts up to 3 drafts often enough here
N = 24           # new tokens per prompt
N_PROMPTS = 8
SPEC_MODES = ("self-spec", "self-spec-quadratic")
LOOKUP_MODES = ("prompt-lookup", "self-spec-lookup")  # derived policies: equality with AR, no coverage claim
DRAWS = {"t0": Draws(), "t0.7": Draws(temperature=0.7, seed=1)}


def gen_params(d: Draws) -> dict:
    return dict(max_new_tokens=N, ignore_eos=True, temperature=d.temperature, top_k=d.top_k, top_p=d.top_p,
                seed=d.seed)


def accepted(result: graphrt.GenerationResult) -> list[int]:
    return [k - 1 for k in result.emit_sizes[1:]]


@pytest.fixture(scope="module")
def shipped() -> tuple[graphrt.Model, list[list[int]]]:
    model = graphrt.load(dtype="float64")
    return model, [p.ids for p in make_prompts(model.tokenizer, N_PROMPTS, 40)]


def batched(model: graphrt.Model, mode: str, prompts: list[list[int]], d: Draws) -> list[graphrt.GenerationResult]:
    """One session per mode with every prompt (requests do not depend on batch mates; fewer calls)."""
    session = graphrt.Session(model.backbone)
    policy = graphrt.compile(mode, model, block_length=None if mode == "ar" else B)
    ids = [session.add(policy, p, graphrt.GenerationParams(**gen_params(d))) for p in prompts]
    results = session.run()
    return [results[i] for i in ids]


@pytest.fixture(scope="module", params=list(DRAWS))
def solo(request, shipped) -> tuple[str, dict[str, list[graphrt.GenerationResult]]]:
    model, prompts = shipped
    d = DRAWS[request.param]
    return request.param, {mode: batched(model, mode, prompts, d) for mode in ("ar",) + SPEC_MODES + LOOKUP_MODES}


def test_cycles_cover_every_accepted_length(solo) -> None:
    name, results = solo
    for mode in SPEC_MODES:
        seen = sorted({k for r in results[mode] for k in accepted(r)})
        assert seen == list(range(B)), f"{mode} at {name}: cycles accepted only {seen} of 0..{B - 1}"


def test_self_spec_and_quadratic_equal_ar(solo) -> None:
    name, results = solo
    for mode in SPEC_MODES + LOOKUP_MODES:
        for i, (got, ar) in enumerate(zip(results[mode], results["ar"])):
            assert got.tokens == ar.tokens, f"{mode} != ar at {name} on held-out prompt {i}"
            assert len(got.tokens) == N


def test_linear_and_quadratic_equal_their_oracles(shipped) -> None:
    """Forward counts and accepted drafts per cycle on a model that accepts, against the dense oracles."""
    model, prompts = shipped
    for name, p in zip(DRAWS, prompts):
        d = DRAWS[name]
        lin, quad = self_spec_oracle(model, p, N, B, draws=d), quadratic_oracle(model, p, N, B, draws=d)
        got_lin = run(model, p, "self-spec", block_length=B, **gen_params(d))
        got_quad = run(model, p, "self-spec-quadratic", block_length=B, **gen_params(d))
        assert (got_lin.tokens, got_lin.forwards, accepted(got_lin)) == (lin.tokens, lin.forwards, lin.accepted)
        assert (got_quad.tokens, got_quad.forwards, accepted(got_quad)) == (quad.tokens, quad.forwards, quad.accepted)
        assert max(lin.accepted + quad.accepted) >= 1  # the comparison covered cycles that accepted drafts


def test_mixed_mode_session_equals_ar(shipped, solo) -> None:
    """Self-spec and quadratic requests for every prompt in one session with AR and diffusion."""
    model, prompts = shipped
    name, results = solo
    d = DRAWS[name]
    session = graphrt.Session(model.backbone)
    ids = []
    for i, p in enumerate(prompts):  # more requests than cache rows: some wait for a row
        for mode in SPEC_MODES:
            ids.append((session.add(graphrt.compile(mode, model, block_length=B), p,
                                    graphrt.GenerationParams(**gen_params(d))), mode, i))
    ar_id = session.add(graphrt.compile("ar", model), prompts[6], graphrt.GenerationParams(**gen_params(d)))
    session.add(graphrt.compile("diffusion", model), prompts[7], graphrt.GenerationParams(max_new_tokens=N))
    out = session.run()
    for rid, mode, i in ids:
        assert out[rid].tokens == results["ar"][i].tokens, f"{mode} in a mixed session != ar on prompt {i}"
    assert out[ar_id].tokens == results["ar"][6].tokens
    seen = sorted({k for rid, _, _ in ids for k in accepted(out[rid])})
    assert seen == list(range(B)), f"mixed session at {name}: cycles accepted only {seen}"
