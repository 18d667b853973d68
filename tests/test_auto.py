"""Mode ``auto`` (adaptive speculation): the cost model, the acceptance statistics, the choice op and its
rule, and output equal to AR's whatever is chosen, on every cycle (float64 tiny models, an accepting toy
backbone on which drafts of every length are accepted)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import graphrt
from graphrt import adaptive
from graphrt.adaptive import (ChoiceState, acceptance_rates, acceptance_update_host, acceptance_update_ref,
                              draft_choice_host, draft_choice_ref, get_rule, register_rule)
from graphrt.api import Model
from graphrt.cost_model import FEATURES, CallShape, CostModel, calibrate, call_shape, load_cached, model_key, probe_batch
from graphrt.frontends.policies.auto import auto, default_widths, summarize_cycles
from graphrt.params import GenerationParams
from graphrt.session import Session
from support.accepting_backbone import AcceptingBackbone
from support.decode_oracles import run, tiny_model

NONE, LOOKUP, DIFFUSION = range(3)


@pytest.fixture(scope="module")
def model() -> Model:
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def accepting() -> Model:
    return Model(AcceptingBackbone(block_size=8, accuracy=0.8), None, "accepting-8")


def every_choice(block: int) -> list[tuple[int, int]]:
    """Every (source, width) ``auto`` offers for a block length."""
    widths = default_widths(block)
    return [(NONE, 1)] + [(s, w) for s in (LOOKUP, DIFFUSION) for w in widths if w > 1]


def rotating_rule(choices: list[tuple[int, int]]) -> adaptive.Rule:
    """A rule that walks through ``choices`` call by call: a different choice on every cycle."""
    calls = itertools.count()

    def rule(state: ChoiceState) -> tuple[int, int]:
        return choices[next(calls) % len(choices)]
    return rule


def constant_rule(choice: tuple[int, int]) -> adaptive.Rule:
    def rule(state: ChoiceState) -> tuple[int, int]:
        return choice
    return rule


# ---------------------------------------------------------------------- identity with AR

@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_auto_equals_ar_when_the_choice_changes_on_every_cycle(model, temperature) -> None:
    choices = every_choice(model.config.block_size)
    policy = auto(rule=rotating_rule(choices))
    for prompt in ([5, 17, 33, 8, 61], [9, 9, 4, 9, 9, 4, 9, 9]):
        params = dict(max_new_tokens=40, ignore_eos=True, temperature=temperature, seed=11, logprobs=True)
        want = run(model, prompt, "ar", **params)
        got = graphrt.generate(model, prompt, mode=policy, **params)
        assert got.tokens == want.tokens
        assert got.logprobs == pytest.approx(want.logprobs, abs=1e-9)
        seen = [tuple(c[:2]) for c in got.cycle_info]
        assert all(a != b for a, b in zip(seen, seen[1:])), "the choice changes on every cycle"
        assert sum(got.emit_sizes) >= len(got.tokens) and len(got.cycle_info) == len(got.emit_sizes) - 1


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_auto_equals_ar_for_every_source_and_draft_length(accepting, temperature) -> None:
    prompt = [3, 14, 15, 9, 26, 5, 3, 14, 15]
    params = dict(max_new_tokens=33, ignore_eos=True, temperature=temperature, seed=5)
    want = run(accepting, prompt, "ar", **params)
    accepted = {}
    for choice in every_choice(accepting.config.block_size):
        got = graphrt.generate(accepting, prompt, mode=auto(rule=constant_rule(choice)), **params)
        assert got.tokens == want.tokens, choice
        assert {tuple(c[:2]) for c in got.cycle_info} == {choice}
        accepted[choice] = sum(c[2] for c in got.cycle_info)
        if choice[0] == DIFFUSION:  # the drafter forward, then the verify forward: two per cycle
            assert got.forwards == 1 + 2 * len(got.cycle_info)
        else:
            assert got.forwards == 1 + len(got.cycle_info)
    assert accepted[(DIFFUSION, 8)] > 0, "the accepting backbone's drafts are accepted"


def test_auto_in_a_session_mixed_with_other_modes(model, accepting) -> None:
    prompts = [[5, 17, 33, 8, 41], [9, 9, 4, 9, 9, 4, 9], [1, 2, 3, 4, 1, 2, 3], [30, 20, 10]]
    for m in (model, accepting):
        rotating = auto(rule=rotating_rule(every_choice(m.config.block_size)))
        modes = ["ar", "self-spec", "prompt-lookup", rotating, "auto", "auto", rotating, "self-spec-lookup"]
        compiled = [graphrt.compile(mode, m) for mode in modes]
        for temperature in (0.0, 0.8):
            params = GenerationParams(max_new_tokens=16, ignore_eos=True, temperature=temperature, seed=2)
            session = Session(m.backbone)
            ids = {}
            for i, policy in enumerate(compiled):
                ids[session.add(policy, prompts[i % len(prompts)], params)] = i
            results = session.run()
            for rid, i in ids.items():
                solo = run(m, prompts[i % len(prompts)], "ar", max_new_tokens=16, ignore_eos=True,
                           temperature=temperature, seed=2)
                assert results[rid].tokens == solo.tokens, (modes[i], temperature)
            auto_results = [results[r] for r, i in ids.items() if modes[i] == "auto"]
            assert all(r.cycle_info for r in auto_results)


def test_the_default_rule_drafts_on_repetitive_text_and_reports_each_cycle(accepting) -> None:
    """Priced by the prior (every call the same: the synthetic backbone's timings mean nothing), drafts pay."""
    session = Session(accepting.backbone, cost_model=CostModel())
    rid = session.add(graphrt.compile("auto", accepting), [3, 14, 15] * 4,
                      GenerationParams(max_new_tokens=48, ignore_eos=True))
    got = session.run()[rid]
    assert not session.cost_model.points, "never calibrated"
    summary = summarize_cycles(got.cycle_info)
    assert summary["cycles"] == len(got.cycle_info) > 0
    drafted = {s: d for s, d in summary["sources"].items() if s != "none"}
    assert drafted and sum(d["accepted"] for d in drafted.values()) > 0
    assert got.tpf > 1.0
    record = got.to_record()
    assert record["cycle_info"] == [list(c) for c in got.cycle_info]


def test_a_policy_file_replaces_the_rule(model) -> None:
    from graphrt.frontends.policies.files import load_policy_file

    policy = load_policy_file("examples/auto_rule.py")
    prompt = [9, 9, 4, 9, 9, 4, 9, 9, 4]
    got = graphrt.generate(model, prompt, mode=policy, max_new_tokens=30, ignore_eos=True)
    assert got.tokens == run(model, prompt, "ar", max_new_tokens=30, ignore_eos=True).tokens
    assert got.cycle_info and {c[0] for c in got.cycle_info} <= {NONE, LOOKUP}, "the file's rule never diffuses"
    assert policy.params["rule"].endswith("lookup_or_step")


def test_an_idle_session_calibrates_once_for_its_first_adaptive_request(model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GRAPHRT_CACHE_DIR", str(tmp_path))
    session = Session(model.backbone, model.tokenizer)
    ar = session.add(graphrt.compile("ar", model), [5, 6, 7], GenerationParams(max_new_tokens=4))
    session.run()
    assert not session.cost_model.points, "an AR request reads no cost model"
    session.add(graphrt.compile("auto", model), [5, 6, 7], GenerationParams(max_new_tokens=4))
    session.run()
    calibrated = session.cost_model
    assert calibrated.points and list(tmp_path.glob("**/*.json")), "calibrated and saved"
    session.add(graphrt.compile("auto", model), [5, 6, 7], GenerationParams(max_new_tokens=4))
    session.run()
    assert session.cost_model is calibrated, "once per session"
    again = Session(model.backbone, model.tokenizer)
    again.add(graphrt.compile("auto", model), [5, 6, 7], GenerationParams(max_new_tokens=4))
    again.run()
    assert again.cost_model.points == calibrated.points, "the next session reads the saved calibration"
    assert session.result(ar).tokens
    given = Session(model.backbone, model.tokenizer)
    given.cost_model = CostModel()  # assigned: used as it is (a tensor-parallel engine's ranks must not measure)
    given.add(graphrt.compile("auto", model), [5, 6, 7], GenerationParams(max_new_tokens=4))
    given.run()
    assert not given.cost_model.points


# ---------------------------------------------------------------------- the ops and the rule

def test_acceptance_update_counts_reached_and_accepted_slots() -> None:
    D = 7
    stats = torch.zeros(6 * D, dtype=torch.float64)
    out = acceptance_update_ref(stats, torch.tensor(LOOKUP), torch.tensor(5), torch.tensor(2), decay=0.5)
    s = out.reshape(3, 2, D)
    assert s[LOOKUP, 0].tolist() == [1, 1, 1, 0, 0, 0, 0]  # slots 0..2 reached (2 accepted, slot 2 rejected)
    assert s[LOOKUP, 1].tolist() == [1, 1, 0, 0, 0, 0, 0]
    assert s[DIFFUSION].abs().sum() == 0 and s[NONE].abs().sum() == 0
    out2 = acceptance_update_ref(out, torch.tensor(LOOKUP), torch.tensor(3), torch.tensor(2), decay=0.5)
    s2 = out2.reshape(3, 2, D)  # all drafted accepted: slots 0, 1 reached and accepted
    assert s2[LOOKUP, 0].tolist() == [1.5, 1.5, 0.5, 0, 0, 0, 0]
    assert s2[LOOKUP, 1].tolist() == [1.5, 1.5, 0, 0, 0, 0, 0]
    plain = acceptance_update_ref(out, torch.tensor(NONE), torch.tensor(1), torch.tensor(0), decay=1.0,
                                  idle_decay=1.0)
    assert torch.equal(plain, out)
    idle = acceptance_update_ref(out, torch.tensor(DIFFUSION), torch.tensor(1), torch.tensor(0), decay=0.5,
                                 idle_decay=0.75)
    assert torch.equal(idle.reshape(3, 2, D)[LOOKUP], 0.75 * s[LOOKUP])  # an unused source fades slowly


def _state(rates: list[float], cost: tuple[float, ...], load: tuple[float, ...], lookup: bool = True) -> ChoiceState:
    """A choice state; ``cost`` gives the first coefficients of :data:`FEATURES`, the adapter's default to 0."""
    D = 7
    r = torch.tensor([[0.0] * D, rates[:D], rates[:D]], dtype=torch.float64)
    cost = tuple(cost) + (0.0,) * (len(FEATURES) - len(cost))
    return ChoiceState(r, torch.zeros(3, D), lookup, (1, 2, 4, 8), (0, 1, 2), 40, cost, load)


def test_expected_rate_drafts_alone_and_steps_in_a_crowded_compute_bound_round() -> None:
    flat = (10e-3, 0.0, 0.0, 0.0)                       # every call the same: draft as far as it pays
    alone = (0.0, 0.0, 0.0, 0.0)
    assert adaptive.expected_rate(_state([0.9] * 7, flat, alone)) == (LOOKUP, 8)
    assert adaptive.expected_rate(_state([0.9] * 7, flat, alone, lookup=False)) == (DIFFUSION, 8)
    assert adaptive.expected_rate(_state([0.05] * 7, flat, alone))[1] == 8, "free tokens: any draft may help"
    per_token = (1e-3, 0.0, 2e-4, 0.0)                  # a token slot costs a fifth of the call
    assert adaptive.expected_rate(_state([0.05] * 7, per_token, alone)) == (NONE, 1)
    assert adaptive.expected_rate(_state([0.9] * 7, per_token, alone)) == (LOOKUP, 8)
    compute = (1e-3, 0.0, 1e-3, 0.0)                    # each token slot costs as much as the call itself
    crowded = (15.0, 1.0, 600.0, 15.0)                  # 15 other rows stepping one token each
    assert adaptive.expected_rate(_state([0.9] * 7, compute, crowded)) == (NONE, 1)
    assert adaptive.expected_rate(_state([0.9] * 7, flat, crowded))[0] == LOOKUP


def test_expected_rate_prices_the_draft_adapter_into_a_diffusion_cycle() -> None:
    """A diffusion draft at 0.6 acceptance commits 2.46 tokens in two rounds: worth it where its forward costs what
    a step costs (1.23 tokens per 10 ms round), not where the adapter adds 10 ms to it (1.23 per 15 ms)."""
    alone = (0.0, 0.0, 0.0, 0.0)
    free_adapter = _state([0.6] * 7, (10e-3,), alone, lookup=False)
    assert adaptive.expected_rate(free_adapter) == (DIFFUSION, 8)
    costly = _state([0.6] * 7, (10e-3, 0.0, 0.0, 0.0, 0.0, 0.0, 10e-3), alone, lookup=False)
    assert costly.cycle_seconds(DIFFUSION, 8) == pytest.approx(15e-3)
    assert costly.cycle_seconds(LOOKUP, 8) == costly.cycle_seconds(NONE, 1) == pytest.approx(10e-3)
    assert adaptive.expected_rate(costly) == (NONE, 1)
    per_token = _state([0.6] * 7, (10e-3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1e-3), alone,
                       lookup=False)  # 1 ms per adapted token
    assert per_token.cycle_seconds(DIFFUSION, 4) == pytest.approx(12e-3)
    assert adaptive.expected_rate(per_token) == (NONE, 1)


def test_expected_rate_steps_back_from_a_round_the_others_made_wide() -> None:
    # Three others drafting 8 wide at low acceptance: joining their width looks free, yet if every
    # request reasons so, none ever steps back; charged at its own width, each one does.
    per_token = (40e-3, 0.0, 1e-3, 0.0)                 # a 40 ms call, 1 ms per token slot (SmolLM2-like)
    wide_others = (3.0, 8.0, 400.0, 3 * 1.3)
    state = _state([0.2] * 7, per_token, wide_others)
    assert adaptive.expected_rate(state) == (NONE, 1)
    assert state.round_seconds(1, join=True) == state.round_seconds(8, join=True) > state.round_seconds(1)
    alone = _state([0.9] * 7, per_token, (0.0, 0.0, 0.0, 0.0))
    assert adaptive.expected_rate(alone) == (LOOKUP, 8), "alone, a good draft is still worth its width"


def test_draft_choice_names_what_a_bad_rule_answered() -> None:
    adaptive.register_rule("test-bad", constant_rule((LOOKUP, 3)), replace=True)
    args = (torch.zeros(42, dtype=torch.float64), torch.tensor(7), torch.tensor(10),
            torch.tensor([1e-3, 0, 0, 0, 0, 0, 0, 0], dtype=torch.float64), torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"rule 'test-bad': expected a source .* width in \[1, 2, 4, 8\].*found "
                                         r"source 1 with width 3"):
        draft_choice_ref(*args, widths=[1, 2, 4, 8], sources=[0, 1, 2], rule="test-bad")
    with pytest.raises(KeyError, match="no rule named 'nope'"):
        draft_choice_ref(*args, widths=[1, 2, 4, 8], sources=[0, 1, 2], rule="nope")
    src, width = draft_choice_ref(*args, widths=[1, 2, 4, 8], sources=[0, 1, 2])
    assert (int(src), int(width)) in set(every_choice(8))


def test_draft_choice_refuses_cost_coefficients_of_another_model() -> None:
    """A graph declaring the four coefficients of the previous cost model fails where it is built,
    naming the input, what was expected and what was found."""
    from graphrt.builder import GraphBuilder
    from graphrt.types import tensor

    b = GraphBuilder("old-auto")
    stats = b.input("stats", tensor("float", 42))
    args = (b.const(0), b.const(0), b.input("cost", tensor("float", 4)), b.input("load", tensor("float", 4)))
    with pytest.raises(ValueError, match=r"cost: expected float\[8\], found float\[4\]"):
        b.draft_choice(stats, *args, widths=[1, 2, 4, 8])


def test_auto_graph_survives_json_and_the_pass_pipeline(model) -> None:
    compiled = graphrt.compile(auto(), model)
    ops = {n.op for n in compiled.graph.walk()} if hasattr(compiled.graph, "walk") else None
    text = json.dumps(graphrt.graph_to_json(compiled.graph))
    back = graphrt.graph_from_json(json.loads(text))
    assert graphrt.verify(back) is not None
    assert "draft_choice" in text and "acceptance_update" in text
    del ops


# ---------------------------------------------------------------------- the cost model

@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from([torch.float32, torch.float64]),
       source=st.integers(0, 2), width=st.integers(1, 8), accepted=st.integers(0, 7),
       decay=st.floats(0.0, 1.0), idle_decay=st.floats(0.0, 1.0))
def test_acceptance_update_host_kernel_equals_the_reference_bit_for_bit(seed, dtype, source, width, accepted, decay,
                                                                         idle_decay) -> None:
    stats = torch.rand(6 * 7, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 5
    args = (stats, torch.tensor(source), torch.tensor(width), torch.tensor(min(accepted, width - 1)))
    want = acceptance_update_ref(*args, decay=decay, idle_decay=idle_decay)
    got = acceptance_update_host(*args, decay=decay, idle_decay=idle_decay)
    assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from([torch.float32, torch.float64]),
       lookup=st.integers(0, 3), start=st.integers(0, 4000), rows=st.integers(0, 15), wide=st.integers(1, 8),
       committed=st.integers(0, 40), prior_weight=st.floats(0.1, 8.0),
       sources=st.sampled_from([[0, 1, 2], [0, 1], [0, 2], [0]]))
def test_draft_choice_host_kernel_sees_and_answers_as_the_reference(seed, dtype, lookup, start, rows, wide, committed,
                                                                      prior_weight, sources) -> None:
    """The host kernel's state is the reference's bit for bit (the rule records it), and so is the answer."""
    g = torch.Generator().manual_seed(seed)
    stats = torch.rand(6 * 7, generator=g, dtype=dtype) * 5
    cost = torch.tensor([2e-3, 1e-4, 3e-5, 2e-4, 1e-6, 4e-6, 1e-3, 1e-5], dtype=torch.float64) * (
        0.5 + torch.rand(len(FEATURES), generator=g, dtype=torch.float64))
    load = torch.tensor([rows, wide, 100.0 * rows, committed], dtype=torch.float64)
    seen: list[ChoiceState] = []

    def recording(state: ChoiceState) -> tuple[int, int]:
        seen.append(state)
        return get_rule("expected-rate")(state)

    register_rule("recording", recording, replace=True)
    args = (stats, torch.tensor(lookup), torch.tensor(start), cost, load)
    kw = dict(widths=[1, 2, 4, 8], sources=sources, rule="recording", prior=[0.0, 0.6, 0.7], prior_weight=prior_weight)
    want, got = draft_choice_ref(*args, **kw), draft_choice_host(*args, **kw)
    ref, host = seen
    assert torch.equal(host.rates, ref.rates) and host.rates.dtype == ref.rates.dtype
    assert torch.equal(host.rates, acceptance_rates(stats, [0.0, 0.6, 0.7], prior_weight))
    assert torch.equal(host.evidence, ref.evidence)
    assert (host.lookup_available, host.start, host.cost, host.load) == (ref.lookup_available, ref.start, ref.cost,
                                                                          ref.load)
    assert [int(t) for t in got] == [int(t) for t in want]


class ClockedBackbone:
    """A backbone wrapper whose calls advance a virtual clock by a known cost (plus a drift); it says it has a draft
    adapter when ``has_adapter`` (the calls that ask for it are charged its cost)."""

    def __init__(self, inner, coef: tuple[float, ...], has_adapter: bool = False) -> None:
        self.inner, self.coef, self.now, self.has_adapter = inner, coef, 0.0, has_adapter

    def forward(self, batch):
        B, L = batch.tokens.shape
        spans = int((batch.positions.max(dim=1).values + 1).sum())
        shape = CallShape(B, L, spans, bool(batch.adapter.any()))
        self.now += float(shape.features @ torch.tensor(self.coef, dtype=torch.float64).numpy())
        return self.inner.forward(batch)

    def clock(self) -> float:
        return self.now

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("has_adapter", [False, True])
def test_calibration_recovers_a_known_cost_and_observations_follow_drift(model, has_adapter) -> None:
    true = (2e-3, 1e-4, 5e-5, 2e-4, 1e-5, 4e-5, 3e-4, 2e-5)
    clocked = ClockedBackbone(model.backbone, true, has_adapter)
    cm = calibrate(clocked, budget_s=0.5, clock=clocked.clock, rows=(1, 2, 4), widths=(1, 4, 8), spans=(0, 32),
                   repeats=1)
    assert model.backbone.free_row_count() == 8, "calibration returns its rows"
    assert {p[3] for p in cm.points} == ({False, True} if has_adapter else {False})
    # without an adapter nothing measures its two coefficients, and the fit leaves them at 0
    assert cm.coef == pytest.approx(true if has_adapter else true[:6] + (0.0, 0.0), rel=1e-6, abs=1e-9)
    shapes = [CallShape(r, w, s, ad) for r in (1, 3, 8) for w in (1, 2, 8) for s in (10, 200)
              for ad in {False, has_adapter}]
    truth = [(s, float(s.features @ torch.tensor(true).numpy())) for s in shapes]
    assert cm.fit_error(truth)["max"] < 1e-6
    # the machine gets twice as slow: observed calls pull the model along
    slower = [(s, 2 * t) for s, t in truth]
    for _ in range(6):
        for s, t in slower:
            cm.observe(s, t)
    assert cm.fit_error(slower)["median"] < 0.25
    assert cm.tensor.tolist() == pytest.approx(list(cm.coef))


def test_calibration_measures_the_corners_past_a_spent_budget(model) -> None:
    """A budget that a few wide calls exhaust still leaves a determined fit: few and many rows, narrow and wide, at
    both spans (else the keys' coefficient would absorb what many tokens cost), one row as wide as the tile (else
    the tokens past it could not be told from the others), and three calls with the adapter."""
    true = (2e-3, 1e-4, 5e-5, 2e-4, 1e-5, 4e-5, 3e-4, 2e-5)
    clocked = ClockedBackbone(model.backbone, true, has_adapter=True)
    clocked.now = 10.0
    cm = calibrate(clocked, budget_s=0.0, clock=lambda: clocked.now + 100.0, rows=(1, 2, 4), widths=(1, 4, 8, 16),
                   spans=(0, 32), repeats=1)
    corners = {(r, w, r * (s + w)) for r in (1, 4) for w in (1, 16) for s in (0, 32)}
    tile = {(1, 8, s + 8) for s in (0, 32)}  # the widest width within the tile, at the fewest rows
    assert {(r, w, s) for r, w, s, ad, _ in cm.points if not ad} == corners | tile
    assert {(r, w, s) for r, w, s, ad, _ in cm.points if ad} == {(1, 1, 33), (4, 1, 132), (1, 16, 48)}
    assert len(cm.points) == 13 >= len(FEATURES)
    assert cm.coef == pytest.approx(true, rel=1e-6, abs=1e-9)
    assert cm.linear(rows=4, width=8) > cm.linear(rows=4, width=1)
    assert cm.linear(rows=4, width=8, adapter=True) > cm.linear(rows=4, width=8)


def test_the_fit_against_measured_step_times(model) -> None:
    """Calibrated on the running toy model, the linear model predicts the times of calls of other shapes,
    each timed as the fastest of a few, as calibration does. Timing on a machine busy with other work is
    noise, not a fit: the test is skipped when the typical (median) call of a shape takes more than 3x its
    fastest; one call delayed by the scheduler among the repeats does not count as a busy machine."""
    import statistics
    import time

    bb = model.backbone
    cm = calibrate(bb, budget_s=3.0, rows=(1, 2, 4, 8), widths=(1, 2, 4), spans=(0, 64), repeats=3)
    rows = bb.alloc_rows(6)
    try:
        measured, spread = [], 1.0
        for r, w in [(1, 1), (3, 1), (2, 4), (5, 2), (6, 4), (4, 3)]:
            batch = probe_batch(rows[:r], w, 0, bb.config.vocab_size)
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                bb.forward(batch)
                times.append(time.perf_counter() - t0)
            spread = max(spread, statistics.median(times[1:]) / min(times[1:]))
            measured.append((CallShape(r, w, r * w), min(times[1:])))
    finally:
        bb.free_rows(rows)
    if spread > 3.0 or len(cm.points) < 6:
        pytest.skip(f"the machine is too busy to time calls (median repeat {spread:.1f}x the fastest, "
                    f"{len(cm.points)} calibration points in 3 s)")
    err = cm.fit_error(measured)
    assert err["median"] < 0.5, (err, cm.describe(), measured)


def test_a_session_refreshes_the_cost_model_from_its_steps(model) -> None:
    cm = CostModel()
    session = Session(model.backbone, cost_model=cm)
    params = GenerationParams(max_new_tokens=12, ignore_eos=True)
    for i, mode in enumerate(["auto", "ar", "auto"]):
        session.add(graphrt.compile(mode, model), [5 + i, 17, 33, 8, 41, 2, 9], params)
    seen: list[CallShape] = []
    observe = cm.observe
    cm.observe = lambda shape, seconds: (seen.append(shape), observe(shape, seconds))  # type: ignore[method-assign]
    session.run()
    assert len(seen) == session.backbone_calls and seen[0].rows == 3
    assert cm.calibrated and cm.tensor.tolist() == pytest.approx(list(cm.coef))
    ar_only = Session(model.backbone, cost_model=CostModel())
    ar_only.add(graphrt.compile("ar", model), [5, 6, 7], params)
    ar_only.run()
    assert ar_only.cost_model.calibrated, "on a host device every call is timed (it costs no synchronisation)"


def test_a_session_tells_the_cost_model_which_calls_ran_the_draft_adapter() -> None:
    """Self-speculation's draft forwards run the adapter, its prefill and verify forwards do not: each observed
    call says which it was, as the backbone saw it."""
    adapted = tiny_model(seed=0, draft_adapter={"rank": 4, "alpha": 8})
    assert adapted.backbone.has_adapter
    flags: list[bool] = []
    calls = CountingBackbone(adapted.backbone)
    forward = calls.forward
    calls.forward = lambda batch: (flags.append(bool(batch.adapter.any())), forward(batch))[1]  # type: ignore
    cm = CostModel()
    seen: list[CallShape] = []
    observe = cm.observe
    cm.observe = lambda shape, seconds: (seen.append(shape), observe(shape, seconds))  # type: ignore[method-assign]
    session = Session(calls, cost_model=cm)
    session.add(graphrt.compile("self-spec", adapted), [5, 17, 33, 8, 41, 2, 9],
                GenerationParams(max_new_tokens=10, ignore_eos=True))
    session.run()
    assert [s.adapter for s in seen] == flags and True in flags and False in flags
    assert cm.ema(seen[flags.index(True)].rows, seen[flags.index(True)].width, seen[flags.index(True)].spans,
                  adapter=True) is not None, "an adapted call has its own bucket"


class CountingBackbone:
    """A backbone wrapper that records each call's ``(rows, width)``."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []

    def forward(self, batch):
        self.calls.append(tuple(batch.tokens.shape))
        return self.inner.forward(batch)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("per_token", [0.0, 1e-3])
def test_a_prompt_joining_decoding_rows_runs_in_its_own_call_where_padding_costs_more(model, per_token) -> None:
    """Three requests decode a token per round; a fourth arrives with a 40-token prompt. One call would pad the
    decoding rows to 40 tokens: with a per-token cost the session runs the prompt alone (a second call), with
    none (every call costs the same) it packs everything; the tokens are the same either way."""
    params = GenerationParams(max_new_tokens=6, ignore_eos=True)
    ar = graphrt.compile("ar", model)
    prompts = [[5, 17, 33], [9, 4, 71], [12, 8, 3], list(range(3, 43))]
    cm = CostModel(coef=[1e-2, 0.0, per_token, 0.0, 0.0, 0.0, 0.0, 0.0], points=[(1, 1, 1, False, 1e-2)] * 4)
    cm.observe = lambda shape, seconds: None  # type: ignore[method-assign]  # keep the given prices
    bb = CountingBackbone(model.backbone)
    session = Session(bb, cost_model=cm, split_calls=True)
    rids = [session.add(ar, p, params) for p in prompts[:3]]
    session.step()
    session.step()  # the three decode one token per round now
    rids.append(session.add(ar, prompts[3], params))
    before = len(bb.calls)
    session.step()
    joined = bb.calls[before:]
    if per_token:
        assert sorted(joined) == [(1, 40), (3, 1)], joined
    else:
        assert joined == [(4, 40)], joined
    done = session.run()
    for rid, prompt in zip(rids, prompts):
        assert done[rid].tokens == graphrt.generate(model, prompt, mode="ar", max_new_tokens=6,
                                                    ignore_eos=True).tokens


def test_cost_model_cache_on_disk(tmp_path, monkeypatch, model) -> None:
    monkeypatch.setenv("GRAPHRT_CACHE_DIR", str(tmp_path))
    key = model_key(model.backbone, "random-0")
    assert load_cached(key) is None
    few = CostModel(coef=[1e-3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], key=key,
                    points=[(1, 1, 2, False, 1.2e-3), (8, 1, 16, False, 1.3e-3)])
    few.save()
    assert load_cached(key) is None, "fewer points than coefficients: underdetermined, measured again"
    cm = CostModel(coef=[1e-3, 2e-4, 3e-5, 1e-4, 0.0, 1e-6, 4e-4, 0.0], key=key,
                   points=[(1, 1, 2, False, 1.2e-3), (4, 1, 8, False, 2e-3), (1, 8, 16, False, 1.5e-3),
                           (4, 8, 64, False, 3e-3), (1, 8, 40, False, 1.6e-3), (1, 8, 16, True, 1.9e-3),
                           (4, 8, 64, True, 3.4e-3), (1, 16, 32, False, 2.4e-3)])
    path = cm.save()
    assert path.parent == tmp_path / "cost_models"
    back = load_cached(key)
    assert back is not None and back.coef.tolist() == cm.coef.tolist() and back.points == cm.points
    assert load_cached(key, max_age_s=-1.0) is None, "stale"
    assert load_cached(model_key(model.backbone, "another")) is None
    monkeypatch.setattr(model.backbone, "kernels", "other-source", raising=False)
    assert model_key(model.backbone, "random-0") != key, "other kernels: measured again"
    path.write_text("{not json", encoding="utf-8")
    assert load_cached(key) is None, "unreadable: measured again, never an error"
    assert "call ms" in cm.describe()
    seven = [f for f in FEATURES if f != "tokens_past_tile"]
    for fmt, features in ((1, FEATURES[:3] + ("kilokeys",)), (2, seven)):  # the four- and seven-feature releases
        old = dict(cm.to_json(), format=fmt, features=list(features), coef=cm.coef.tolist()[:len(features)])
        path.write_text(json.dumps(old), encoding="utf-8")
        assert load_cached(key) is None, f"format {fmt}: measured again"
        with pytest.raises(ValueError, match=f"expected format 3 with features .*tokens_past_tile.* found format "
                                             f"{fmt}"):
            CostModel.from_json(old)
    assert call_shape(2, 4, [9, 19]).spans == 30 and not call_shape(2, 4, [9, 19]).adapter


def test_rules_and_choices_enumerate() -> None:
    assert "expected-rate" in adaptive.rule_names()
    assert list(itertools.chain(*every_choice(4))) == [0, 1, 1, 2, 1, 4, 1, 8, 2, 2, 2, 4, 2, 8]
    assert default_widths(2) == (1, 2, 8) and default_widths(16) == (1, 2, 4, 8, 16)


# ---------------------------------------------------------------------- serving

@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_serve_default_mode_auto_reports_choices_and_metrics(tmp_path, monkeypatch) -> None:
    import httpx

    from support.server_harness import MODEL_NAME, metric, server

    monkeypatch.setenv("GRAPHRT_CACHE_DIR", str(tmp_path))  # the server's calibration goes here
    prompt = "import os\nimport sys\n\nimport os\n"
    offline = graphrt.load(dtype="float64", max_batch=1)
    want = graphrt.generate(offline, prompt, mode="ar", max_new_tokens=24, ignore_eos=True)
    with server(["--dtype", "float64", "--max-batch", "2", "--default-mode", "auto"]) as url:
        body = httpx.post(url + "/v1/completions", json={"model": MODEL_NAME, "prompt": prompt, "max_tokens": 24,
                                                          "temperature": 0, "ignore_eos": True}, timeout=120).json()
        stats = body["graphrt"]
        assert stats["mode"] == "auto" and stats["auto"]["cycles"] > 0
        assert body["choices"][0]["text"] == want.text
        drafted = [s for s in stats["auto"]["sources"] if s != "none"]
        for source in drafted:
            assert metric(url, "graphrt_spec_decode_num_draft_tokens_total", source=source) > 0
            assert 0.0 <= metric(url, "graphrt_spec_decode_acceptance_rate", source=source) <= 1.0
            assert metric(url, "graphrt_spec_decode_mean_accepted_length", source=source) >= 1.0
        assert "graphrt_auto_cycles_total" in httpx.get(url + "/metrics").text
    assert list((tmp_path / "cost_models").glob("*.json")), "the calibration was cached"
