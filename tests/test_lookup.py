"""Drafting from the request's own context: the ``ngram_lookup`` op, prompt-lookup decoding and
context-augmented self-speculation (float64 random tiny models; output equal to AR's)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphrt
from graphrt.builder import GraphBuilder
from graphrt.frontends import policies
from graphrt.ir import GraphError
from graphrt.ngram import ngram_lookup_host, ngram_lookup_ref
from graphrt.frontends.policies.forward_merging import NotApplicable, merge_forwards
from graphrt.types import tensor
from support.decode_oracles import run, tiny_model

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def lookup_oracle(ctx: list[int], k: int, max_ngram: int = 3, min_ngram: int = 1) -> list[int] | None:
    """The n-gram lookup as a plain loop: longest suffix first, most recent match, periodic continuation."""
    L = len(ctx)
    for n in range(max_ngram, min_ngram - 1, -1):
        if L <= n:
            continue
        for j in range(L - n - 1, -1, -1):
            if ctx[j:j + n] == ctx[L - n:]:
                ext = list(ctx)
                for i in range(k):
                    ext.append(ext[j + n + i])
                return ext[L:]
    return None


@pytest.mark.parametrize("lookup", [ngram_lookup_ref, ngram_lookup_host], ids=["reference", "host kernel"])
@settings(max_examples=100, deadline=None)
@given(ctx=st.lists(st.integers(0, 3), min_size=0, max_size=14), pad=st.integers(0, 4), k=st.integers(1, 6),
       lo=st.integers(1, 3), extra=st.integers(0, 2))
def test_ngram_lookup_equals_the_plain_loop(lookup, ctx: list[int], pad: int, k: int, lo: int, extra: int) -> None:
    buf = torch.tensor(ctx + [7] * pad, dtype=torch.int64)  # what lies past the length is never read
    if buf.numel() == 0:
        buf = torch.tensor([7], dtype=torch.int64)
    draft, count = lookup(buf, torch.tensor(len(ctx)), k=k, max_ngram=lo + extra, min_ngram=lo)
    want = lookup_oracle(ctx, k, lo + extra, lo)
    assert draft.dtype == torch.int64 and count.dtype == torch.int64 and count.dim() == 0
    assert (draft.tolist(), int(count)) == ((want, k) if want is not None else ([0] * k, 0))


def test_ngram_lookup_runs_its_host_kernel_on_the_cpu() -> None:
    from graphrt.executor import resolve_impl

    cpu = torch.device("cpu")
    assert resolve_impl("ngram_lookup", cpu) is ngram_lookup_host
    assert resolve_impl("ngram_lookup", cpu, "off") is ngram_lookup_ref


def test_ngram_lookup_prefers_the_longest_suffix_then_the_latest_match() -> None:
    ctx = torch.tensor([1, 2, 3, 9, 2, 3, 8, 1, 2, 3])
    draft, count = ngram_lookup_ref(ctx, torch.tensor(10), k=2, max_ngram=3, min_ngram=1)
    assert draft.tolist() == [9, 2] and int(count) == 2          # "1 2 3" beats the later "2 3"
    draft, _ = ngram_lookup_ref(ctx, torch.tensor(10), k=2, max_ngram=2, min_ngram=1)
    assert draft.tolist() == [8, 1]                               # the most recent "2 3"


def test_ngram_lookup_and_window_update_type_check() -> None:
    b = GraphBuilder("t")
    ctx = b.input("ctx", tensor("i64", "N"))
    draft, count = b.ngram_lookup(ctx, b.const(3), k=4)
    assert str(draft.type) == str(tensor("i64", 4)) and count.type.shape == ()
    assert b.dynamic_update_slice(ctx, b.const(1), draft).type == ctx.type
    with pytest.raises(GraphError, match="context: expected i64"):
        b.ngram_lookup(b.cast(ctx, dtype="float"), b.const(3), k=4)
    with pytest.raises(GraphError, match="min_ngram <= max_ngram"):
        b.ngram_lookup(ctx, b.const(3), k=2, max_ngram=1, min_ngram=2)
    with pytest.raises(GraphError, match="update: expected i64"):
        b.dynamic_update_slice(ctx, b.const(0), b.cast(draft, dtype="float"))


def _cycles(emit_sizes: list[int]) -> list[int]:
    """Output lengths at which each cycle starts (the first emit is the prefill's token)."""
    starts, n = [], emit_sizes[0]
    for size in emit_sizes[1:]:
        starts.append(n)
        n += size
    return starts


def _expected_emits(prompt: list[int], ar: list[int], b: int, n: int, min_ngram: int) -> list[int]:
    """Prompt-lookup's emit sizes from the AR output: each cycle accepts the looked-up drafts AR agrees with."""
    sizes, done = [1], 1
    while done < n:
        draft = lookup_oracle(prompt + ar[:done], b - 1, 3, min_ngram) or [0] * (b - 1)
        k = 0
        while k < b - 1 and done + k < len(ar) and draft[k] == ar[done + k]:
            k += 1
        sizes.append(k + 1)
        done += k + 1
    return sizes


@SETTINGS
@given(seed=st.integers(0, 40), prompt=st.lists(st.integers(3, 12), min_size=1, max_size=9),
       b=st.integers(2, 5), n=st.integers(1, 16))
def test_prompt_lookup_equals_ar_with_the_oracle_forward_count(seed: int, prompt: list[int], b: int, n: int) -> None:
    m = tiny_model(seed=seed, max_batch=1)
    ar = run(m, prompt, "ar", max_new_tokens=n + b, ignore_eos=True)
    pl = run(m, prompt, "prompt-lookup", block_length=b, max_new_tokens=n, ignore_eos=True)
    assert pl.tokens == ar.tokens[:n]
    assert pl.emit_sizes == _expected_emits(prompt, ar.tokens, b, n, 1)
    assert pl.forwards == len(pl.emit_sizes)                     # prefill + one verify forward per cycle


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(2, 5), temperature=st.sampled_from([0.7, 1.0, 1.5]),
       top_k=st.sampled_from([0, 5]), top_p=st.sampled_from([1.0, 0.8]),
       mode=st.sampled_from(["prompt-lookup", "self-spec-lookup"]))
def test_lookup_modes_equal_ar_with_the_same_seed_at_t_positive(seed: int, b: int, temperature: float, top_k: int,
                                                                top_p: float, mode: str) -> None:
    m = tiny_model(seed=1)
    p = dict(max_new_tokens=14, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, ignore_eos=True,
             logprobs=True)
    prompt = [20, 21, 22, 20, 21]
    ar = run(m, prompt, "ar", **p)
    got = run(m, prompt, mode, block_length=b, **p)
    assert got.tokens == ar.tokens
    assert got.logprobs == pytest.approx(ar.logprobs, abs=1e-9)


@SETTINGS
@given(seed=st.integers(0, 40), prompt=st.lists(st.integers(3, 40), min_size=1, max_size=9),
       b=st.integers(2, 5), n=st.integers(1, 16), min_ngram=st.integers(1, 2))
def test_self_spec_lookup_equals_ar_and_skips_the_draft_forward_on_a_match(seed: int, prompt: list[int], b: int,
                                                                           n: int, min_ngram: int) -> None:
    m = tiny_model(seed=seed, max_batch=1)
    ar = run(m, prompt, "ar", max_new_tokens=n, ignore_eos=True)
    policy = graphrt.compile(policies.self_spec_lookup(b, min_ngram=min_ngram), m)
    got = graphrt.generate(m, prompt, mode=policy, max_new_tokens=n, ignore_eos=True)
    assert got.tokens == ar.tokens
    # Per cycle: one verify forward, plus one draft forward unless the context had a match.
    drafted = sum(lookup_oracle(prompt + ar.tokens[:s], b - 1, 3, min_ngram) is None
                  for s in _cycles(got.emit_sizes))
    assert got.forwards == 1 + len(got.emit_sizes) - 1 + drafted


def test_lookup_modes_share_a_session_with_the_other_modes() -> None:
    m = tiny_model(seed=0)
    reqs = [("prompt-lookup", [5, 6, 7, 5, 6], {}), ("self-spec-lookup", [9, 9, 9], {"temperature": 0.9, "seed": 4}),
            ("ar", [5, 6, 7], {}), ("self-spec", [70, 2, 9, 9], {}), ("diffusion", [8, 8], {"seed": 5})]
    solo = [run(m, prompt, mode, max_new_tokens=10, ignore_eos=True, **extra).tokens for mode, prompt, extra in reqs]
    session = graphrt.Session(m.backbone)
    ids = [session.add(graphrt.compile(mode, m), prompt,
                       graphrt.GenerationParams(max_new_tokens=10, ignore_eos=True, **extra))
           for mode, prompt, extra in reqs]
    results = session.run()
    assert [results[i].tokens for i in ids] == solo


def test_prompt_lookup_repeats_for_free_what_the_context_repeats() -> None:
    m = tiny_model(seed=0)
    ar = run(m, [5, 6, 7, 8, 5, 6, 7, 8, 5, 6], "ar", max_new_tokens=30, ignore_eos=True)
    pl = run(m, [5, 6, 7, 8, 5, 6, 7, 8, 5, 6], "prompt-lookup", block_length=4, max_new_tokens=30, ignore_eos=True)
    assert pl.tokens == ar.tokens and pl.forwards < ar.forwards  # this model's greedy output loops: drafts hit


def test_forward_merging_says_why_context_drafts_do_not_merge() -> None:
    m = tiny_model(seed=0)
    with pytest.raises(NotApplicable, match="not \\[seed, MASK x \\(b-1\\)\\]"):
        merge_forwards(policies.self_spec_lookup(block_length=4)).build(m.config)
    with pytest.raises(NotApplicable, match="draft loop"):
        merge_forwards(policies.prompt_lookup(block_length=4)).build(m.config)


def test_lookup_policies_refuse_bad_parameters() -> None:
    with pytest.raises(ValueError, match="block_length must be >= 2"):
        policies.prompt_lookup(block_length=1)
    with pytest.raises(ValueError, match="1 <= min_ngram <= max_ngram"):
        policies.self_spec_lookup(max_ngram=1, min_ngram=2)


def test_the_lookup_replay_counts_the_forwards_prompt_lookup_runs() -> None:
    """``bench/lookup_tuning.py`` chooses the lookup defaults by replaying recorded AR output; its forward
    count must be what prompt-lookup decoding actually runs."""
    import importlib.util

    path = Path(__file__).parents[1] / "bench" / "lookup_tuning.py"
    spec = importlib.util.spec_from_file_location("lookup_tuning", path)
    tuning = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tuning)  # type: ignore[union-attr]
    m = graphrt.load()
    for prompt, block, hi in (([5, 6, 7, 8, 5, 6, 7, 8, 5, 6], 8, 4), ([9, 4, 9, 4, 11, 12, 9, 4], 4, 2),
                              (list(range(20, 60)), 8, 3)):
        ar = run(m, prompt, "ar", max_new_tokens=40, ignore_eos=True).tokens
        got = run(m, prompt, policies.prompt_lookup(block_length=block, max_ngram=hi), max_new_tokens=40,
                  ignore_eos=True)
        assert got.tokens == ar
        assert tuning.replay(prompt + ar, len(prompt), block, hi, 1) == (len(ar), got.forwards)
