"""The fused work between a packed layer's products: the torch layer's results up to float32 rounding, and each
token's bits independent of the call around it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from graphrt.backbone import ForwardBatch
from graphrt.frontends.models.checkpoint import init_random_
from graphrt.frontends.models.config import default_test_config
import numba as nb

from graphrt.frontends.models.fused_glue import KEY_CHUNK, _add_norm, _attention, _exp, _rope_write, _silu_gate
from graphrt.frontends.models.transformer import RMSNorm, Transformer, TransformerBackbone, apply_rope, group_mask

F32 = torch.float32


def norm_rows(x: torch.Tensor, delta: torch.Tensor | None, w: torch.Tensor, eps: float) -> torch.Tensor:
    out = torch.empty_like(x)
    d = x if delta is None else delta
    _add_norm(x.numpy(), d.numpy(), delta is not None, w.numpy(), np.float32(eps), out.numpy())
    return out


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), width=st.sampled_from([16, 32, 48, 576]), seed=st.integers(0, 2**16))
def test_norm_equals_rmsnorm_and_each_row_is_the_same_alone(rows: int, width: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, delta = torch.randn(rows, width, generator=g), torch.randn(rows, width, generator=g)
    w = torch.randn(width, generator=g)
    norm = RMSNorm(width, 1e-5)
    norm.weight.data.copy_(w)
    want = norm(x + delta).detach()
    x_inplace = x.clone()
    got = norm_rows(x_inplace, delta, w, 1e-5)
    torch.testing.assert_close(x_inplace, x + delta)  # the residual, added in place
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for i in range(rows):
        assert torch.equal(norm_rows((x[i:i + 1] + delta[i:i + 1]).clone(), None, w, 1e-5), got[i:i + 1]), i


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_silu_gate_equals_torch_and_each_row_is_the_same_alone(rows: int, seed: int) -> None:
    gu = torch.randn(rows, 2 * 24, generator=torch.Generator().manual_seed(seed)) * 4
    out = torch.empty(rows, 24)
    _silu_gate(gu.numpy(), out.numpy())
    torch.testing.assert_close(out, F.silu(gu[:, :24]) * gu[:, 24:], rtol=1e-5, atol=1e-6)
    for i in range(rows):
        alone = torch.empty(1, 24)
        _silu_gate(gu[i:i + 1].numpy(), alone.numpy())
        assert torch.equal(alone, out[i:i + 1])


@nb.njit
def _exp_all(x: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = _exp(x[i])
    return out


def test_exp_is_within_1e7_of_the_exact_exponential_and_clamps_outside_float32() -> None:
    x = np.concatenate([np.linspace(-87, 88, 400_001, dtype=np.float32),
                        np.array([0.0, -0.0, 1e-30, -1e-30, 1.0, -1.0], np.float32)])
    exact = np.exp(x.astype(np.float64))
    rel = np.abs(_exp_all(x) - exact) / exact
    assert rel.max() < 1e-7, (x[rel.argmax()], rel.max())
    edges = _exp_all(np.array([-1e4, -100.0, 100.0, 1e4, np.inf, -np.inf], np.float32))
    assert np.all(np.isfinite(edges)) and edges[0] == edges[1] > 0 and edges[2] == edges[3] == edges[4]
    assert edges[5] == edges[0]


def test_rope_write_equals_apply_rope_and_the_cache_writes() -> None:
    """Queries in attention's grouped layout, keys and values at their rows' slots, as the torch layer puts them."""
    g = torch.Generator().manual_seed(3)
    B, L, H, KV, d, R, S = 2, 3, 4, 2, 8, 4, 10
    qkv = torch.randn(B, L, (H + 2 * KV) * d, generator=g)
    angles = torch.rand(B, L, d // 2, generator=g) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)  # [B, L, d]
    rows, slots = torch.tensor([3, 1]), torch.tensor([[5, 6, 9], [0, 1, 2]])
    kc, vc = torch.zeros(R, KV, S, d), torch.zeros(R, KV, S, d)
    q, k, v = torch.empty(B, H, L, d), torch.empty(B, KV, L, d), torch.empty(B, KV, L, d)
    _rope_write(qkv.view(B * L, -1).numpy(), cos.view(B * L, d).numpy(), sin.view(B * L, d).numpy(), H, KV,
                rows.numpy(), slots.numpy(), kc.numpy(), vc.numpy(), q.view(B, KV, H // KV * L, d).numpy(),
                k.numpy(), v.numpy())
    q_ref, k_ref, v_ref = qkv.split([H * d, KV * d, KV * d], -1)
    q_ref = apply_rope(q_ref.view(B, L, H, d).transpose(1, 2), cos, sin)
    k_ref = apply_rope(k_ref.view(B, L, KV, d).transpose(1, 2), cos, sin)
    v_ref = v_ref.view(B, L, KV, d).transpose(1, 2)
    torch.testing.assert_close(q, q_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k, k_ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(v, v_ref)
    for b in range(B):
        for t in range(L):
            assert torch.equal(kc[rows[b], :, slots[b, t]], k[b, :, t])
            assert torch.equal(vc[rows[b], :, slots[b, t]], v[b, :, t])
    untouched = torch.ones(R, S, dtype=torch.bool)
    untouched[rows[:, None], slots] = False
    assert not kc.permute(0, 2, 1, 3)[untouched].any()


def attention(q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, rows: torch.Tensor, keys: int,
              mask: torch.Tensor) -> torch.Tensor:
    """:func:`_attention` of grouped queries ``q [B, KV, g*L, d]`` under ``mask [B, L, keys]``."""
    B, KV, G, d = q.shape
    L = mask.shape[1]
    out = torch.empty(B * L, G // L * KV * d)
    bias = torch.zeros(B, L, keys).masked_fill_(~mask, -np.inf)
    chunks = -(-keys // KEY_CHUNK)
    part_o = np.full((B, KV, chunks, G, d), np.nan, np.float32)  # a partial result left unset shows
    part_m, part_l = np.full((2, B, KV, chunks, G), np.nan, np.float32)
    _attention(q.numpy(), kc.numpy(), vc.numpy(), rows.numpy(), keys, bias.numpy(), torch.arange(B).numpy(),
               np.float32(d ** -0.5), part_o, part_m, part_l, out.numpy())
    return out.view(B, L, -1)


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 3), L=st.integers(1, 9), keys=st.integers(1, 3 * KEY_CHUNK),
       extra=st.integers(1, 2 * KEY_CHUNK), seed=st.integers(0, 2**16))
def test_attention_equals_sdpa_and_a_query_depends_on_its_own_keys_only(B: int, L: int, keys: int, extra: int,
                                                                        seed: int) -> None:
    """Against SDPA on scattered rows under a random mask (each query sees at least one key; past one chunk of
    keys, a token sees none of the first chunk); then the same queries with more masked keys after theirs (whole
    chunks of them too), each row alone, and each token alone: the same bits."""
    g = torch.Generator().manual_seed(seed)
    KV, groups, d, R = 2, 3, 16, 4
    kc, vc = torch.randn(R, KV, keys + extra, d, generator=g), torch.randn(R, KV, keys + extra, d, generator=g)
    q = torch.randn(B, KV, groups * L, d, generator=g)
    rows = torch.randperm(R, generator=g)[:B]
    mask = torch.rand(B, L, keys, generator=g) < 0.6
    if keys > KEY_CHUNK:
        mask[:, -1, :KEY_CHUNK] = False  # a query with a chunk whose keys it sees none of
    mask[:, :, 0] |= ~mask.any(-1)
    got = attention(q, kc, vc, rows, keys, mask)
    want = F.scaled_dot_product_attention(q, kc[rows, :, :keys], vc[rows, :, :keys],
                                          attn_mask=group_mask(mask, groups))  # [B, KV, g*L, d]
    want = want.reshape(B, KV * groups, L, d).transpose(1, 2).reshape(B, L, -1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    longer = torch.cat([mask, torch.zeros(B, L, extra, dtype=torch.bool)], -1)
    assert torch.equal(attention(q, kc, vc, rows, keys + extra, longer), got)
    for b in range(B):
        assert torch.equal(attention(q[b:b + 1], kc, vc, rows[b:b + 1], keys, mask[b:b + 1]), got[b:b + 1])
    by_token = q.view(B, KV, groups, L, d)
    for t in range(L):  # the token alone: its query heads, its mask row
        alone = attention(by_token[:, :, :, t].contiguous(), kc, vc, rows, keys, mask[:, t:t + 1])
        assert torch.equal(alone, got[:, t:t + 1]), f"token {t} alone"


def _call(rows: list[int], ids: torch.Tensor, start: list[int], L: int, adapter_from: int | None = None,
          write: bool = True) -> ForwardBatch:
    B = len(rows)
    adapter = torch.zeros(B, L, dtype=torch.bool)
    if adapter_from is not None:
        adapter[:, adapter_from:] = True
    return ForwardBatch(rows=rows, tokens=torch.stack([ids[s:s + L] for s in start]),
                        positions=torch.stack([torch.arange(s, s + L) for s in start]),
                        attention=torch.ones(B, L, L, dtype=torch.bool).tril(), kind="causal",
                        kv_write=torch.full((B, L), write), adapter=adapter, valid=torch.ones(B, L, dtype=torch.bool))


def test_a_fused_backbone_equals_the_torch_glue_over_prefill_steps_drafts_and_scattered_rows() -> None:
    """The same packed model with and without the fused glue: prefills, 1-token steps, a drafted block through
    the adapter, rows packed together, scattered and in a range with holes -- the same logits and cache to
    float32 rounding; a token in calls of any width, and a row alone or packed with others, the same bits."""
    cfg = dict(hidden_size=32, head_dim=16, draft_adapter={"rank": 4, "alpha": 8})
    models = [init_random_(Transformer(default_test_config(**cfg)), 9).to(F32).eval() for _ in range(2)]
    for m in models:
        for layer in m.encoder.layers:
            torch.nn.init.normal_(layer.self_attn.o_proj.lora_B.weight, generator=torch.Generator().manual_seed(1))
    bbs = [TransformerBackbone(m, max_rows=4, row_capacity=64, linear="packed") for m in models]
    assert all(layer.glue is not None for layer in models[0].encoder.layers)
    for layer in models[1].encoder.layers:
        layer.glue = None
    ids = torch.randint(3, 90, (48,), generator=torch.Generator().manual_seed(2))
    script = [([0], [0], 12, None), ([2], [0], 9, None), ([3], [0], 5, None),  # causal prefills
              ([0], [12], 1, None), ([0, 2], [13, 9], 1, None),  # steps; rows 0 and 2: a range with a hole
              ([3, 0], [5, 14], 1, None),  # a step of rows in scattered order
              ([2, 0], [10, 15], 4, 1),  # scattered order, a block drafted through the adapter
              ([0, 2, 3], [19, 14, 6], 3, None)]
    for rows, start, L, adapter_from in script:
        fused, torch_glue = (bb.forward(_call(rows, ids, start, L, adapter_from)) for bb in bbs)
        torch.testing.assert_close(fused, torch_glue, rtol=1e-5, atol=1e-5)
    for layer in range(len(models[0].encoder.layers)):
        torch.testing.assert_close(bbs[0].cache._k[layer], bbs[1].cache._k[layer], rtol=1e-5, atol=1e-5)
    wide = bbs[0].forward(_call([0], ids, [21], 4, write=False))
    for L in (1, 2, 3):  # a token's logits in a narrower call: the same bits (what lossless verification needs)
        assert torch.equal(bbs[0].forward(_call([0], ids, [21], L, write=False)), wide[:, :L]), f"{L} tokens"
    packed = bbs[0].forward(_call([0, 2], ids, [21, 14], 2, write=False))
    for i, (row, start) in enumerate(((0, 21), (2, 14))):  # and a row alone, the same bits
        assert torch.equal(bbs[0].forward(_call([row], ids, [start], 2, write=False)), packed[i:i + 1]), row


def test_the_glue_reads_the_layers_own_norm_weights() -> None:
    """The glue's norm weights are the parameters' memory (prepack copies the parameters out of the checkpoint's
    map first), so a weight changed in place after packing is the one the fused layer uses."""
    model = init_random_(Transformer(default_test_config(hidden_size=32, head_dim=16)), 4).to(F32).eval()
    TransformerBackbone(model, max_rows=1, row_capacity=16, linear="packed")
    for layer in model.encoder.layers:
        for norm, array in ((layer.input_layernorm, layer.glue.w_in), (layer.post_attention_layernorm,
                                                                      layer.glue.w_post)):
            assert array.ctypes.data == norm.weight.data_ptr()
