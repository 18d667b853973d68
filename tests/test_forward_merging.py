"""Forward merging: linear -> quadratic self-speculation, its contract and its refusals."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphrt
from graphrt.backbone import BackboneConfig
from graphrt.builder import GraphBuilder
from graphrt.frontends import policies
from graphrt.frontends.policies.forward_merging import NotApplicable, merge_forward_graph, merge_forwards
from graphrt.library import accept_length, ban_mask, decode_inputs, sample_tokens
from graphrt.policy import Policy
from support.decode_oracles import run, tiny_model
from support.toy_backbone import ToyBackbone

CONFIG = BackboneConfig(vocab_size=96, max_positions=256, mask_token_id=95, bos_token_id=1, eos_token_id=2,
                        block_size=4)


def _generate(backbone, policy, prompt, **params) -> graphrt.GenerationResult:
    session = graphrt.Session(backbone)
    rid = session.add(graphrt.compile(policy, backbone), prompt, graphrt.GenerationParams(**params))
    return session.run()[rid]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 40), b=st.integers(1, 5), temperature=st.sampled_from([0.0, 1.0]),
       prompt=st.lists(st.integers(3, 94), min_size=1, max_size=6))
def test_quadratic_equals_ar_on_random_models(seed, b, temperature, prompt) -> None:
    m = tiny_model(seed=seed, max_batch=1)
    p = dict(max_new_tokens=11, ignore_eos=True, temperature=temperature, seed=seed)
    ar = run(m, prompt, "ar", **p)
    quad = run(m, prompt, "self-spec-quadratic", block_length=b, **p)
    assert quad.tokens == ar.tokens
    assert quad.forwards == len(quad.emit_sizes)  # one forward per cycle, the first one included


@pytest.mark.parametrize("wrong,b", [(set(), 4), ({9, 14, 15}, 4), (set(range(0, 100, 3)), 5), (set(), 1)])
def test_quadratic_accepts_like_linear_with_one_forward_per_cycle(wrong, b) -> None:
    prompt = [1, 2, 3, 4, 5]
    bb = ToyBackbone(block_size=b, wrong=wrong)
    want = [bb.truth(p) for p in range(5, 5 + 24)]
    ar = _generate(bb, policies.ar(), prompt, max_new_tokens=24)
    lin = _generate(bb, policies.self_spec(), prompt, max_new_tokens=24)
    quad = _generate(bb, merge_forwards(policies.self_spec()), prompt, max_new_tokens=24)
    assert ar.tokens == lin.tokens == quad.tokens == want
    assert quad.forwards == len(quad.emit_sizes)
    assert lin.forwards == 1 + 2 * (len(lin.emit_sizes) - 1) if b > 1 else lin.forwards == len(lin.emit_sizes)
    if not wrong and b > 1:
        assert all(k == b for k in quad.emit_sizes[1:-1])  # every draft accepted: b tokens per forward
        assert quad.tpf > lin.tpf


def _capped_self_spec(cap: int) -> Policy:
    """A user policy of the linear shape whose acceptance rule caps accepted drafts at ``cap``."""
    def build(config: BackboneConfig):
        blen, mask_id = config.block_size, config.mask_token_id
        b = GraphBuilder("capped")
        io = decode_inputs(b)
        logits, cache = b.forward(io.cache, io.prompt, b.arange_like(io.prompt, 0))
        n = b.size(io.prompt)
        seed = sample_tokens(b, ban_mask(b, logits[-1], mask_id), n, io)
        done = b.emit(seed.unsqueeze())

        def cycle(cache, seed, start):
            pos = b.arange(start, length=blen)
            block = b.concat(seed.unsqueeze(), b.fill(length=blen - 1, value=mask_id))

            def draft(block):
                lg = ban_mask(b, b.forward(cache, block, pos, attention="bidirectional", write="none"), mask_id)
                cand = sample_tokens(b, lg, pos, io, purpose=1)
                masked = block == mask_id
                filled = b.where(masked & (b.gather(b.softmax(b.clean(lg)), cand) >= 0.0), cand, block)
                return (filled == mask_id).any(), filled

            (block,) = b.loop((block == mask_id).any(), [block], draft)
            lg, cache = b.forward(cache, block, pos)
            ar = sample_tokens(b, ban_mask(b, lg, mask_id), pos + 1, io)
            k = b.minimum(accept_length(b, block, ar), cap)
            done = b.emit(ar, k + 1)
            cache = b.commit(cache, start + k + 1)
            return ~done, cache, b.gather(ar, k), start + k + 1

        b.loop(~done, [cache, seed, n], cycle)
        return b.build()

    return Policy("capped", build, {"cap": cap}, overshoot=lambda c: c.block_size + 1)


def test_user_policy_with_another_acceptance_rule_merges() -> None:
    bb = ToyBackbone(block_size=5)
    prompt = [4, 4, 4]
    lin = _generate(bb, _capped_self_spec(2), prompt, max_new_tokens=20)
    merged = merge_forwards(_capped_self_spec(2))
    assert merged.name == "capped+merged"
    quad = _generate(bb, merged, prompt, max_new_tokens=20)
    assert quad.tokens == lin.tokens == [bb.truth(p) for p in range(3, 23)]
    assert max(quad.emit_sizes) == 3  # the cap carried over: at most 2 drafts + 1 bonus
    assert quad.forwards < lin.forwards
    m = tiny_model(seed=5, max_batch=1)
    a = run(m, [9, 8, 7], "ar", max_new_tokens=9, ignore_eos=True)
    q = _generate(m.backbone, merge_forwards(_capped_self_spec(1)), [9, 8, 7], max_new_tokens=9, ignore_eos=True)
    assert q.tokens == a.tokens


@pytest.mark.parametrize("policy,reason", [
    (policies.ar(), "expected one cycle loop|the cycle needs exactly one draft loop"),
    (policies.diffusion(), "has threshold 0.9; forward merging requires draft threshold 0"),
    (policies.diffusion(threshold=0.0), "must run on the drafted block|no carried seed of the form gather"),
    (policies.self_spec(4, 0.5), "threshold 0.5; forward merging requires draft threshold 0"),
])
def test_refuses_with_a_reason(policy, reason) -> None:
    with pytest.raises(NotApplicable, match=reason):
        merge_forward_graph(policy.build(CONFIG), CONFIG)
