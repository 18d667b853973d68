"""The transformer backbone: dense vs cached paths, and agreement with transformers.

Shapes are tiny (vocab 96, hidden 32, 2 layers); token-for-token checks run in float64.
"""

from __future__ import annotations

import pytest
import torch

from graphrt.backbone import Backbone, ForwardBatch, row_logits
from graphrt.frontends.models.checkpoint import init_random_, load_checkpoint
from graphrt.frontends.models.config import ModelConfig, default_test_config
from graphrt.frontends.models.transformer import Transformer, TransformerBackbone, causal_mask
from graphrt.frontends.models.kvcache import RowKVCache

F64 = torch.float64


def make_model(seed: int = 0, dtype: torch.dtype = F64, **overrides) -> Transformer:
    cfg = default_test_config(**overrides)
    return init_random_(Transformer(cfg), seed).to(dtype).eval()


def batch(rows, tokens, positions, attention, *, kind="mask", write=True, adapter=None, valid=None) -> ForwardBatch:
    B, L = tokens.shape
    full = torch.ones(B, L, dtype=torch.bool)
    w = full.clone() if write is True else (~full if write is False else write)
    return ForwardBatch(rows=list(rows), tokens=tokens, positions=positions, attention=attention, kind=kind,
                        kv_write=w, adapter=~full if adapter is None else adapter,
                        valid=full if valid is None else valid)


def prefix_block_mask(P: int, block: torch.Tensor) -> torch.Tensor:
    """Dense ``[1, P+L, P+L]`` mask: causal over the prefix, the new tokens see the whole prefix + ``block``."""
    L = block.shape[-1]
    m = torch.zeros(P + L, P + L, dtype=torch.bool)
    m[:P, :P] = torch.ones(P, P, dtype=torch.bool).tril()
    m[P:, :P] = True
    m[P:, P:] = block
    return m[None]


def ar_reference(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    B, L = tokens.shape
    return model.forward_dense(tokens, torch.arange(L).expand(B, L), causal_mask(B, L))


# ----------------------------------------------------------------------------- cache
def test_kvcache_rows_and_errors() -> None:
    c = RowKVCache(rows=3, layers=1, kv_heads=1, capacity=4, head_dim=2, dtype=F64)
    assert c.alloc_rows(2) == [0, 1] and c.free_row_count() == 1
    with pytest.raises(RuntimeError, match="cannot allocate 2 rows: only 1 of 3 are free"):
        c.alloc_rows(2)
    k = torch.arange(4, dtype=F64).view(1, 2, 1, 1, 2)  # [B=1, L=2, layers, KV, d]
    c.write([1], torch.tensor([[2, 0]]), torch.tensor([[True, False]]), k, -k)
    assert c.length(1) == 3 and c.length(0) == 0
    rk, rv = c.read([1, 0])
    assert rk.shape == (2, 1, 1, 3, 2) and torch.equal(rk[0, 0, 0, 2], k[0, 0, 0, 0])
    assert torch.equal(c.prefix_mask([1, 0], 3), torch.tensor([[True, True, True], [False, False, False]]))
    with pytest.raises(ValueError, match=r"positions expected in \[0, 4\)"):
        c.write([1], torch.tensor([[4, 0]]), torch.tensor([[True, False]]), k, k)
    c.crop(1, 1)
    assert c.length(1) == 1
    c.free_rows([1])
    with pytest.raises(ValueError, match="row 1 is not allocated"):
        c.free_rows([1])
    assert c.alloc_rows(2) == [1, 2]


# ----------------------------------------------------------------------------- self-consistency
def test_protocol_and_prefill_then_steps_match_dense() -> None:
    model = make_model()
    bb = TransformerBackbone(model, max_rows=2, row_capacity=32)
    assert isinstance(bb, Backbone) and bb.config.vocab_size == 96
    tokens = torch.randint(0, 96, (1, 9), generator=torch.Generator().manual_seed(1))
    ref = ar_reference(model, tokens)  # [1, 9, V]
    (row,) = bb.alloc_rows(1)
    outs = [bb.forward(batch([row], tokens[:, :5], torch.arange(5)[None], causal_mask(1, 5).clone(), kind="causal"))]
    for i in range(5, 9):
        outs.append(bb.forward(batch([row], tokens[:, i:i + 1], torch.tensor([[i]]),
                                     torch.ones(1, 1, 1, dtype=torch.bool), kind="causal")))
    torch.testing.assert_close(torch.cat(outs, 1), ref, rtol=0, atol=1e-12)
    assert bb.cache_length(row) == 9


def test_block_bidirectional_read_only_and_arbitrary_mask() -> None:
    model = make_model(seed=2)
    bb = TransformerBackbone(model, max_rows=1, row_capacity=16)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 96, (1, 10), generator=g)
    (row,) = bb.alloc_rows(1)
    bb.forward(batch([row], tokens[:, :6], torch.arange(6)[None], causal_mask(1, 6).clone(), kind="causal"))
    pos = torch.arange(6, 10)[None]
    for kind, block in [("bidirectional", torch.ones(4, 4, dtype=torch.bool)),
                        ("mask", (torch.rand(4, 4, generator=g) < 0.5) | torch.eye(4, dtype=torch.bool))]:
        out = bb.forward(batch([row], tokens[:, 6:], pos, block[None].clone(), kind=kind, write=False))
        ref = model.forward_dense(tokens, torch.arange(10)[None], prefix_block_mask(6, block))[:, 6:]
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
        assert bb.cache_length(row) == 6  # read-only


def test_crop_then_rewrite() -> None:
    model = make_model(seed=4)
    bb = TransformerBackbone(model, max_rows=1, row_capacity=16)
    g = torch.Generator().manual_seed(5)
    a, b = torch.randint(0, 96, (1, 8), generator=g), torch.randint(0, 96, (1, 3), generator=g)
    (row,) = bb.alloc_rows(1)
    bb.forward(batch([row], a, torch.arange(8)[None], causal_mask(1, 8).clone(), kind="causal"))
    bb.crop(row, 5)
    assert bb.cache_length(row) == 5
    out = bb.forward(batch([row], b, torch.arange(5, 8)[None], causal_mask(1, 3).clone(), kind="causal"))
    ref = ar_reference(model, torch.cat((a[:, :5], b), 1))[:, 5:]
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_batch_packing_invariance_with_padding() -> None:
    model = make_model(seed=6)
    g = torch.Generator().manual_seed(7)
    p0, p1 = torch.randint(0, 96, (1, 5), generator=g), torch.randint(0, 96, (1, 3), generator=g)
    n0, n1 = torch.randint(0, 96, (1, 2), generator=g), torch.randint(0, 96, (1, 3), generator=g)

    def prefill(bb: TransformerBackbone, row: int, p: torch.Tensor) -> None:
        L = p.shape[1]
        bb.forward(batch([row], p, torch.arange(L)[None], causal_mask(1, L).clone(), kind="causal"))

    solo = TransformerBackbone(model, max_rows=2, row_capacity=16)
    r0, r1 = solo.alloc_rows(2)
    prefill(solo, r0, p0)
    prefill(solo, r1, p1)
    s0 = solo.forward(batch([r0], n0, torch.tensor([[5, 6]]), causal_mask(1, 2).clone()))
    s1 = solo.forward(batch([r1], n1, torch.tensor([[3, 4, 5]]), causal_mask(1, 3).clone()))

    packed = TransformerBackbone(model, max_rows=2, row_capacity=16)
    q0, q1 = packed.alloc_rows(2)
    prefill(packed, q0, p0)
    prefill(packed, q1, p1)
    tokens = torch.cat((torch.cat((n0, torch.tensor([[-1]])), 1), n1, torch.zeros(1, 3, dtype=torch.long)))
    positions = torch.tensor([[5, 6, 0], [3, 4, 5], [-1, -1, -1]])
    valid = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])
    attention = causal_mask(3, 3).clone()
    attention[2] = False  # a padding row that may attend to nothing
    out = packed.forward(batch([q0, q1, -1], tokens, positions, attention, valid=valid))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, :2], s0[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[1], s1[0], rtol=0, atol=1e-12)
    assert (packed.cache_length(q0), packed.cache_length(q1)) == (7, 6)
    torch.testing.assert_close(packed.cache.k[q0, :, :, :7], solo.cache.k[r0, :, :, :7], rtol=0, atol=1e-12)


@pytest.mark.parametrize("rows,layout", [([0, 2, 3, 5], "spread"), ([1, 4], "spread"), ([0, 5], "gather"),
                                         ([2, 3, 4], "views")])
def test_rows_with_holes_attend_in_place_and_match_solo_calls(rows: list[int], layout: str) -> None:
    """A call of rows that are not one contiguous range: spread over the range's views when it is at most
    twice the rows (the holes' queries idle), else gathered; either way every row's logits and K/V equal
    its solo call's, and the rows outside the call are left as they were."""
    model = make_model(seed=8)
    g = torch.Generator().manual_seed(9)
    prompts = [torch.randint(0, 96, (1, n), generator=g) for n in (5, 3, 7, 4, 6, 2)]
    new = torch.randint(0, 96, (6, 2), generator=g)

    def filled() -> TransformerBackbone:
        bb = TransformerBackbone(model, max_rows=6, row_capacity=16)
        for r, p in zip(bb.alloc_rows(6), prompts):
            bb.forward(batch([r], p, torch.arange(p.shape[1])[None], causal_mask(1, p.shape[1]).clone(),
                             kind="causal"))
        return bb

    def step(bb: TransformerBackbone, rs: list[int]) -> torch.Tensor:
        positions = torch.tensor([[prompts[r].shape[1], prompts[r].shape[1] + 1] for r in rs])
        return bb.forward(batch(rs, new[rs], positions, causal_mask(len(rs), 2).clone()))

    packed = filled()
    plan = packed.cache.plan(rows, torch.zeros(len(rows), 1, dtype=torch.long),
                             torch.zeros(len(rows), 1, dtype=torch.bool), spread=True)
    assert layout == ("spread" if plan.spread is not None else "gather" if plan.gather is not None else "views")
    before = packed.cache.k.clone()
    out = step(packed, rows)
    solo = filled()
    for i, r in enumerate(rows):
        torch.testing.assert_close(out[i], step(solo, [r])[0], rtol=0, atol=1e-12)
    after = packed.cache.k
    for r in range(6):
        n = prompts[r].shape[1] + (2 if r in rows else 0)
        assert packed.cache_length(r) == n
        torch.testing.assert_close(after[r, :, :, :n], solo.cache.k[r, :, :, :n], rtol=0, atol=1e-12)
        if r not in rows:
            assert torch.equal(after[r], before[r])


def test_forward_batch_single_and_pack() -> None:
    """A request's forward is a one-row batch; pack pads rows to the longest and keeps their kind only
    when every row has the same length; one batch packs into itself."""
    causal = ForwardBatch.single(3, torch.tensor([5, 6, 7]), torch.tensor([0, 1, 2]), causal_mask(1, 3)[0],
                                 "causal", torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool))
    assert causal.rows == [3] and causal.tokens.shape == (1, 3) and causal.valid.all()
    assert ForwardBatch.pack([causal]) is causal
    short = ForwardBatch.single(1, torch.tensor([9]), torch.tensor([4]), torch.ones(1, 1, dtype=torch.bool),
                                "causal", torch.zeros(1, dtype=torch.bool), torch.ones(1, dtype=torch.bool))
    packed = ForwardBatch.pack([causal, short])
    assert packed.rows == [3, 1] and packed.kind == "mask"
    assert packed.tokens.tolist() == [[5, 6, 7], [9, 0, 0]] and packed.positions.tolist() == [[0, 1, 2], [4, 0, 0]]
    assert packed.valid.tolist() == [[True] * 3, [True, False, False]]
    assert packed.kv_write.tolist() == [[True] * 3, [False] * 3]
    assert packed.adapter.tolist() == [[False] * 3, [True, False, False]]
    assert torch.equal(packed.attention[0], causal.attention[0]) and packed.attention[1].sum() == 1
    assert ForwardBatch.pack([causal, causal]).kind == "causal"
    with pytest.raises(ValueError, match="expected at least one batch, found none"):
        ForwardBatch.pack([])


def test_one_token_rows_do_not_make_a_padded_call_return_every_logit() -> None:
    """AR steps (one token, any logits) joined by a prompt that wants its last token's: the call asks for each
    row's last logits only, so the output head runs on one token per row, not on every padded position (four
    decoding rows joined by a 232-token prompt made it 928 tokens: 180 MB of logits and 52 GFLOP on SmolLM2).
    Rows wider than one token that want every logit get them (see the next test)."""
    def one(tokens: list[int], logits: str) -> ForwardBatch:
        n = len(tokens)
        return ForwardBatch.single(0, torch.tensor(tokens), torch.arange(n), causal_mask(1, n)[0], "causal",
                                   torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool), logits)

    prompt, step, verify = one([5, 6, 7, 8], "last"), one([9], "all"), one([3, 4], "all")
    assert ForwardBatch.pack([step, prompt, step]).logits == "last"
    assert ForwardBatch.pack([step, step]).logits == "last"
    assert ForwardBatch.pack([verify, prompt]).logits == "index"
    assert ForwardBatch.pack([verify, one([1, 2], "last")]).logits == "all"
    model = make_model(seed=8)
    bb = TransformerBackbone(model, max_rows=2, row_capacity=16)
    r0, r1 = bb.alloc_rows(2)
    bb.forward(batch([r0], torch.tensor([[1, 2, 3]]), torch.arange(3)[None], causal_mask(1, 3).clone(),
                     kind="causal"))
    alone = TransformerBackbone(model, max_rows=1, row_capacity=16)
    (a0,) = alone.alloc_rows(1)
    alone.forward(batch([a0], torch.tensor([[1, 2, 3]]), torch.arange(3)[None], causal_mask(1, 3).clone(),
                        kind="causal"))
    want = alone.forward(batch([a0], torch.tensor([[4]]), torch.tensor([[3]]), causal_mask(1, 1).clone(),
                               kind="causal"))  # [1, 1, V]
    dec = ForwardBatch.single(r0, torch.tensor([4]), torch.tensor([3]), causal_mask(1, 1)[0], "causal",
                              torch.ones(1, dtype=torch.bool), torch.zeros(1, dtype=torch.bool), "all")
    joined = ForwardBatch.single(r1, torch.tensor([7, 8, 9, 10]), torch.arange(4), causal_mask(1, 4)[0], "causal",
                                 torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool), "last")
    out = bb.forward(ForwardBatch.pack([dec, joined]))
    assert out.shape[:2] == (2, 1)
    torch.testing.assert_close(out[0], want[0], rtol=0, atol=1e-12)


def test_rows_wanting_every_logit_joined_by_a_wider_prompt_get_theirs_only() -> None:
    """Verification rows (3 tokens, every logit) packed with a 9-token prompt (its last logit): the call asks
    for 3 tokens per row (``"index"``: each verification row's tokens, the prompt's last token), so the output
    head runs on 3 tokens per row, not 9; each row's logits equal its call alone. A backbone that returns
    every token's logits instead is read the same way (:func:`row_logits`)."""
    model = make_model(seed=10)
    g = torch.Generator().manual_seed(11)
    prefix, block, prompt = (torch.randint(0, 96, (n,), generator=g) for n in (4, 3, 9))

    def verify(row: int, logits: str = "all") -> ForwardBatch:
        return ForwardBatch.single(row, block, torch.arange(4, 7), causal_mask(1, 3)[0], "causal",
                                   torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool), logits)

    def new_prompt(row: int) -> ForwardBatch:
        return ForwardBatch.single(row, prompt, torch.arange(9), causal_mask(1, 9)[0], "causal",
                                   torch.ones(9, dtype=torch.bool), torch.zeros(9, dtype=torch.bool), "last")

    def backbone() -> tuple[TransformerBackbone, list[int]]:
        bb = TransformerBackbone(model, max_rows=3, row_capacity=16)
        rows = bb.alloc_rows(3)
        for r in rows[:2]:
            bb.forward(batch([r], prefix[None], torch.arange(4)[None], causal_mask(1, 4).clone(), kind="causal"))
        return bb, rows

    bb, (r0, r1, r2) = backbone()
    packed = ForwardBatch.pack([verify(r0), new_prompt(r2), verify(r1, "last")])
    assert packed.logits == "index" and packed.logit_index.tolist() == [[0, 1, 2], [8, 8, 8], [2, 2, 2]]
    out = bb.forward(packed)
    assert out.shape[:2] == (3, 3)
    alone, (a0, _, a2) = backbone()
    want = [alone.forward(verify(a0))[0], alone.forward(new_prompt(a2))[0, -1:], alone.forward(verify(a0))[0, -1:]]
    full = torch.zeros(3, 9, out.shape[-1], dtype=out.dtype)  # the same logits laid out as "all" returns them
    full[0, :3], full[1, 8], full[2, 2] = want[0], want[1][0], want[2][0]
    for got in (out, full):
        for i, (n, last) in enumerate(((3, False), (9, True), (3, True))):
            torch.testing.assert_close(row_logits(got, 9, i, n, last), want[i], rtol=0, atol=1e-12)
    prompt_last = ForwardBatch.pack([verify(r0), new_prompt(r2)])  # the widest row packed last
    assert prompt_last.logits == "index" and prompt_last.logit_index.tolist() == [[0, 1, 2], [8, 8, 8]]


def test_pack_of_equal_lengths_shares_constant_fields() -> None:
    """Rows of one length pack without padding: per-row fields are concatenated, a field every row shares
    (the same constant mask or flags) becomes a view of it; values equal the padded packing's."""
    mask, on, off = causal_mask(1, 2)[0], torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    rows = [ForwardBatch.single(r, torch.tensor([r, r + 1]), torch.tensor([4, 5]), mask, "causal", on, off)
            for r in range(3)]
    own = ForwardBatch.single(7, torch.tensor([1, 2]), torch.tensor([0, 1]), mask.clone(), "causal", on.clone(), on)
    packed = ForwardBatch.pack(rows + [own])
    assert packed.rows == [0, 1, 2, 7] and packed.kind == "causal"
    assert packed.tokens.tolist() == [[0, 1], [1, 2], [2, 3], [1, 2]]
    assert packed.positions.tolist() == [[4, 5]] * 3 + [[0, 1]]
    assert packed.adapter.tolist() == [[False, False]] * 3 + [[True, True]]
    assert torch.equal(packed.attention, mask.expand(4, 2, 2)) and packed.kv_write.all() and packed.valid.all()
    shared = ForwardBatch.pack(rows)
    assert shared.attention.data_ptr() == mask.data_ptr() and shared.attention.shape == (3, 2, 2)  # a view
    assert shared.kv_write.data_ptr() == on.data_ptr() and shared.tokens.data_ptr() != rows[0].tokens.data_ptr()
    mixed = ForwardBatch.pack([rows[0], ForwardBatch.single(5, torch.tensor([3, 3]), torch.tensor([1, 2]),
                                                            torch.ones(2, 2, dtype=torch.bool), "bidirectional",
                                                            off, off)])
    assert mixed.kind == "mask" and mixed.attention[1].all() and not mixed.attention[0, 0, 1]


def test_draft_adapter_applies_per_token() -> None:
    model = make_model(seed=8, draft_adapter={"rank": 4, "alpha": 8})
    base = make_model(seed=8)
    base.load_state_dict({k: v for k, v in model.state_dict().items() if "lora" not in k})
    tokens = torch.randint(0, 96, (1, 6), generator=torch.Generator().manual_seed(9))
    pos, mask = torch.arange(6)[None], causal_mask(1, 6)
    sel = torch.tensor([[False, False, False, True, True, False]])
    with_ad = model.forward_dense(tokens, pos, mask, adapter=sel)
    plain = base.forward_dense(tokens, pos, mask)
    torch.testing.assert_close(with_ad[:, :3], plain[:, :3], rtol=0, atol=1e-12)
    assert (with_ad[:, 3:] - plain[:, 3:]).abs().max() > 1e-3
    bb = TransformerBackbone(model, max_rows=1, row_capacity=8)
    (row,) = bb.alloc_rows(1)
    out = bb.forward(batch([row], tokens, pos, mask.clone(), kind="causal", adapter=sel))
    torch.testing.assert_close(out, with_ad, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- vs transformers
transformers = pytest.importorskip("transformers")


def hf_model(kind: str, cfg: ModelConfig, ours: Transformer, dtype: torch.dtype):
    """A transformers model of ``kind`` with ``ours``' weights."""
    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                  num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                  num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps,
                  max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if kind == "mistral":
        hc = transformers.MistralConfig(**common, rope_theta=cfg.rope_theta, sliding_window=None)
        cls = transformers.MistralForCausalLM
    elif kind == "ministral3":
        hc = transformers.Ministral3Config(**common, rope_parameters=dict(cfg.rope_parameters), sliding_window=None)
        cls = transformers.Ministral3ForCausalLM
    elif kind == "qwen2":
        hc = transformers.Qwen2Config(**common, rope_theta=cfg.rope_theta, use_sliding_window=False)
        cls = transformers.Qwen2ForCausalLM
    else:
        hc = transformers.Qwen3Config(**common, rope_theta=cfg.rope_theta, use_sliding_window=False)
        cls = transformers.Qwen3ForCausalLM
    hc._attn_implementation = "eager"
    model = cls(hc).to(dtype).eval()
    sd = {("lm_head.weight" if k == "diffusion_head.weight" else "model." + k[len("encoder."):]): v
          for k, v in ours.state_dict().items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    return model


YARN = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0, "original_max_position_embeddings": 16384,
        "beta_fast": 32.0, "beta_slow": 1.0, "llama_4_scaling_beta": 0.1}


@pytest.mark.parametrize("kind,overrides", [
    ("mistral", {}),
    ("ministral3", {"rope_parameters": {**YARN, "mscale": 1.0, "mscale_all_dim": 1.0}}),
    ("ministral3", {"rope_parameters": YARN}),  # attention factor 0.1 * ln(16) + 1
    ("qwen2", {"attention_bias": True}),
    ("qwen3", {"qk_norm": True}),
])
def test_logits_match_transformers(kind: str, overrides: dict) -> None:
    big = kind == "ministral3"
    model = make_model(seed=10, dtype=torch.float32, rope_theta=1e6 if big else 10000.0,
                       max_position_embeddings=16384 * 16 if big else 256, **overrides)
    ref = hf_model(kind, model.config, model, torch.float32)
    tokens = torch.randint(0, 96, (1, 8), generator=torch.Generator().manual_seed(11))
    pos = (torch.tensor([[0, 1, 2, 16383, 16384, 40000, 100000, 262000]]) if big else torch.arange(8)[None])
    with torch.no_grad():
        want = ref(input_ids=tokens, position_ids=pos).logits
        dense = model.forward_dense(tokens, pos, causal_mask(1, 8))
    torch.testing.assert_close(dense, want, rtol=0, atol=1e-4)
    bb = TransformerBackbone(model, max_rows=1, row_capacity=16)
    (row,) = bb.alloc_rows(1)
    out = bb.forward(batch([row], tokens, pos, causal_mask(1, 8).clone(), kind="causal", write=False))
    torch.testing.assert_close(out, want, rtol=0, atol=1e-4)


def test_load_transformers_checkpoint(tmp_path) -> None:
    """A ``save_pretrained`` Qwen3 directory loads through the AR name mapping."""
    model = make_model(seed=12, dtype=torch.float32, qk_norm=True)
    ref = hf_model("qwen3", model.config, model, torch.float32)
    ref.save_pretrained(tmp_path / "qwen3")
    cfg, loaded = load_checkpoint(tmp_path / "qwen3")  # no mask token: a placeholder id, no warning
    assert cfg.qk_norm and cfg.mask_token_id == 95 and cfg.dlm_paradigm == "autoregressive"
    tokens = torch.randint(0, 96, (1, 6), generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        torch.testing.assert_close(ar_reference(loaded, tokens), ref(input_ids=tokens).logits, rtol=0, atol=1e-4)


def test_greedy_generation_matches_transformers_mistral() -> None:
    model = make_model(seed=14)
    ref = hf_model("mistral", model.config, model, F64)
    prompt = torch.randint(3, 96, (1, 5), generator=torch.Generator().manual_seed(15))
    with torch.no_grad():
        want = ref.generate(prompt, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    bb = TransformerBackbone(model, max_rows=1, row_capacity=32)
    (row,) = bb.alloc_rows(1)
    logits = bb.forward(batch([row], prompt, torch.arange(5)[None], causal_mask(1, 5).clone(), kind="causal"))
    seq = prompt[0].tolist()
    for _ in range(10):
        nxt = int(logits[0, -1].argmax())
        seq.append(nxt)
        logits = bb.forward(batch([row], torch.tensor([[nxt]]), torch.tensor([[len(seq) - 1]]),
                                  torch.ones(1, 1, 1, dtype=torch.bool), kind="causal"))
    assert seq == want[0].tolist()


@pytest.mark.slow
def test_compiled_backbone_matches_eager() -> None:
    """Compiled == eager; a new token count L (beyond 0/1 specialisation) does not recompile."""
    from torch._dynamo.utils import counters

    model = make_model(seed=16, dtype=torch.float32)
    eager = TransformerBackbone(model, max_rows=1, row_capacity=16)
    comp = TransformerBackbone(model, max_rows=1, row_capacity=16, compile=True)
    tokens = torch.randint(0, 96, (1, 11), generator=torch.Generator().manual_seed(17))
    for bb in (eager, comp):
        bb.alloc_rows(1)
    compiled_before_last = 0
    for lo, hi in [(0, 5), (5, 6), (6, 9), (9, 11)]:
        if hi == 11:
            compiled_before_last = counters["stats"]["unique_graphs"]
        L = hi - lo
        args = ([0], tokens[:, lo:hi], torch.arange(lo, hi)[None], causal_mask(1, L).clone())
        torch.testing.assert_close(comp.forward(batch(*args)), eager.forward(batch(*args)), rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == compiled_before_last
