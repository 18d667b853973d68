"""The three decoding modes end to end against hand-written oracles (float64, random tiny models)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphrt
from graphrt.frontends import policies
from support.decode_oracles import diffusion_oracle, greedy_oracle, run, self_spec_oracle, tiny_model

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


def test_ar_equals_hand_written_greedy_loop(model) -> None:
    prompt = [5, 17, 33, 8, 61]
    res = run(model, prompt, "ar", max_new_tokens=16, ignore_eos=True)
    assert res.tokens == greedy_oracle(model, prompt, 16)
    assert res.forwards == 16 and res.tpf == 1.0


def test_ar_equals_transformers_greedy(model) -> None:
    transformers = pytest.importorskip("transformers")
    from test_backbone import hf_model

    net = model.backbone.model
    ref = hf_model("mistral", net.config, net, torch.float64)
    prompt = torch.tensor([[7, 3, 44, 90, 12, 5]])
    with torch.no_grad():
        want = ref.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0,
                            suppress_tokens=[net.config.mask_token_id])
    del transformers
    res = run(model, prompt[0].tolist(), "ar", max_new_tokens=12, ignore_eos=True)
    assert res.tokens == want[0, 6:].tolist()


@pytest.mark.parametrize("b,threshold", [(2, 0.9), (3, 0.5), (4, 0.9), (4, 0.0), (4, 1.0), (5, None), (4, None)])
def test_diffusion_equals_oracle(model, b: int, threshold: float | None) -> None:
    prompt = [9, 4, 71, 23]
    res = run(model, prompt, "diffusion", block_length=b, threshold=threshold, max_new_tokens=13)
    want, forwards = diffusion_oracle(model, prompt, 13, b, threshold)
    assert res.tokens == want
    assert res.forwards == forwards


def test_diffusion_step_schedule_and_eos_early_exit() -> None:
    # A model whose EOS is a frequent token exercises the early exit.
    m = tiny_model(seed=3)
    for seed_prompt in range(3):
        prompt = [(7 * seed_prompt + k) % 90 + 3 for k in range(3)]
        for steps in (2, 3):
            res = graphrt.generate(m, prompt, mode=graphrt.compile(policies.diffusion(4, None, steps), m),
                                   max_new_tokens=12)
            want, forwards = diffusion_oracle(m, prompt, 12, 4, None, steps)
            assert (res.tokens, res.forwards) == (want, forwards)


@SETTINGS
@given(seed=st.integers(0, 50), prompt=st.lists(st.integers(3, 94), min_size=1, max_size=7),
       b=st.integers(1, 6), n=st.integers(1, 14))
def test_self_spec_equals_ar_at_t0(seed: int, prompt: list[int], b: int, n: int) -> None:
    m = tiny_model(seed=seed, max_batch=1)
    ar = run(m, prompt, "ar", max_new_tokens=n, ignore_eos=True)
    ss = run(m, prompt, "self-spec", block_length=b, max_new_tokens=n, ignore_eos=True)
    assert ss.tokens == ar.tokens
    want = self_spec_oracle(m, prompt, n, b)
    assert (ss.tokens, ss.forwards, [k - 1 for k in ss.emit_sizes[1:]]) == (want.tokens, want.forwards, want.accepted)


@pytest.mark.parametrize("b", [3, 4])
def test_self_spec_with_draft_threshold_is_still_lossless(model, b: int) -> None:
    prompt = [11, 12, 13]
    ar = run(model, prompt, "ar", max_new_tokens=10, ignore_eos=True)
    ss = run(model, prompt, "self-spec", block_length=b, threshold=0.5, max_new_tokens=10, ignore_eos=True)
    assert ss.tokens == ar.tokens


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(2, 5), temperature=st.sampled_from([0.7, 1.0, 1.5]),
       top_k=st.sampled_from([0, 5]), top_p=st.sampled_from([1.0, 0.8]))
def test_self_spec_equals_ar_with_same_seed_at_t_positive(model, seed: int, b: int, temperature: float,
                                                          top_k: int, top_p: float) -> None:
    p = dict(max_new_tokens=12, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, ignore_eos=True)
    ar = run(model, [20, 21, 22], "ar", **p)
    ss = run(model, [20, 21, 22], "self-spec", block_length=b, **p)
    assert ss.tokens == ar.tokens


def test_sampling_depends_on_seed(model) -> None:
    outs = {tuple(run(model, [20, 21], "ar", max_new_tokens=8, temperature=1.0, seed=s, ignore_eos=True).tokens)
            for s in range(4)}
    assert len(outs) > 1


def test_mixed_session_matches_solo_runs_with_fewer_calls(model) -> None:
    reqs = [("ar", [5, 6, 7], {}), ("diffusion", [40, 41, 42, 43, 44, 45, 46], {"threshold": 0.5}),
            ("self-spec", [70, 2, 9, 9], {}), ("self-spec", [33], {"temperature": 0.9, "seed": 3}),
            ("diffusion", [8, 8], {"temperature": 1.2, "seed": 5, "threshold": 0.9})]
    solo, solo_forwards = [], 0
    for mode, prompt, extra in reqs:
        thr = extra.pop("threshold", None)
        r = run(model, prompt, mode, threshold=thr, max_new_tokens=10, ignore_eos=True, **extra)
        extra["threshold"] = thr
        solo.append(r.tokens)
        solo_forwards += r.forwards
    session = graphrt.Session(model.backbone)
    ids = []
    for mode, prompt, extra in reqs:
        policy = graphrt.compile(mode, model, threshold=extra.get("threshold"))
        params = {k: v for k, v in extra.items() if k != "threshold"}
        ids.append(session.add(policy, prompt, graphrt.GenerationParams(max_new_tokens=10, ignore_eos=True,
                                                                         **params)))
    results = session.run()
    assert [results[i].tokens for i in ids] == solo
    assert session.backbone_calls < solo_forwards


def test_request_output_independent_of_batch_mates(model) -> None:
    params = graphrt.GenerationParams(max_new_tokens=9, temperature=1.0, seed=42, ignore_eos=True)
    policy = graphrt.compile("self-spec", model)
    alone = graphrt.Session(model.backbone)
    rid = alone.add(policy, [3, 4, 5], params)
    want = alone.run()[rid].tokens
    crowd = graphrt.Session(model.backbone)
    crowd.add(graphrt.compile("ar", model), [50] * 9, graphrt.GenerationParams(max_new_tokens=5, seed=1,
                                                                               temperature=1.0))
    rid = crowd.add(policy, [3, 4, 5], params)
    crowd.add(graphrt.compile("diffusion", model), [60, 61], graphrt.GenerationParams(max_new_tokens=7))
    assert crowd.run()[rid].tokens == want


def test_stops_budget_and_logprobs(model) -> None:
    base = run(model, [5, 6, 7], "ar", max_new_tokens=12, ignore_eos=True)
    stop = base.tokens[4]
    first = base.tokens.index(stop)
    cut = run(model, [5, 6, 7], "self-spec", max_new_tokens=12, ignore_eos=True, stop_token_ids=(stop,))
    assert cut.tokens == base.tokens[: first + 1] and cut.finish_reason == "stop"
    late = run(model, [5, 6, 7], "ar", max_new_tokens=12, ignore_eos=True, stop_token_ids=(stop,),
               min_new_tokens=first + 2)
    assert len(late.tokens) > first + 1
    lp = run(model, [5, 6, 7], "ar", max_new_tokens=4, ignore_eos=True, logprobs=True)
    assert lp.logprobs is not None and len(lp.logprobs) == 4 and all(x <= 0 for x in lp.logprobs)
    lp_ss = run(model, [5, 6, 7], "self-spec", max_new_tokens=4, ignore_eos=True, logprobs=True)
    assert lp_ss.logprobs == pytest.approx(lp.logprobs, abs=1e-9)


def test_cancel_and_step_api(model) -> None:
    session = graphrt.Session(model.backbone)
    policy = graphrt.compile("ar", model)
    a = session.add(policy, [1, 2, 3], graphrt.GenerationParams(max_new_tokens=50, ignore_eos=True))
    b = session.add(policy, [4, 5], graphrt.GenerationParams(max_new_tokens=3, ignore_eos=True))
    got: dict[int, list[int]] = {a: [], b: []}
    for _ in range(4):
        for rid, toks in session.step().items():
            got[rid] += toks
    session.cancel(a)
    assert session.done(a) and session.result(a).finish_reason == "cancelled"
    assert session.result(a).tokens == got[a] and len(got[a]) == 4
    assert session.result(b).tokens == got[b] and len(got[b]) == 3
    assert not session.has_work


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_thinking_budget_forces_the_end_token_in_every_causal_mode(model, temperature: float) -> None:
    p = dict(max_new_tokens=12, ignore_eos=True, temperature=temperature, seed=9)
    free = run(model, [14, 15], "ar", **p)
    end = next(t for t in range(3, 90) if t not in free.tokens)   # a token AR would not produce here
    forced = run(model, [14, 15], "ar", thinking_budget=5, end_think_token_id=end, **p)
    assert forced.tokens[:5] == free.tokens[:5] and forced.tokens[5] == end
    assert forced.tokens.count(end) == 1
    for mode in ("self-spec", "self-spec-quadratic"):
        other = run(model, [14, 15], mode, block_length=4, thinking_budget=5, end_think_token_id=end, **p)
        assert other.tokens == forced.tokens
    natural = free.tokens[2]                                      # already emitted before the budget runs out
    kept = run(model, [14, 15], "self-spec", thinking_budget=5, end_think_token_id=natural, **p)
    assert kept.tokens == run(model, [14, 15], "ar", thinking_budget=5, end_think_token_id=natural, **p).tokens
    with pytest.raises(ValueError, match="thinking_budget"):
        graphrt.GenerationParams(thinking_budget=3)
