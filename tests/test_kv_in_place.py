"""The KV cache is attended where it lies: a forward copies nothing proportional to the cached prefix.

Allocated bytes of one forward are measured with torch.profiler's memory events, over two
prefix lengths; the growth per cached token must stay below what the attention itself
needs (its score/probability rows and the call's mask), which is far less than one
layer's K for that token (what a gather or a per-layer concatenation would copy).
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from graphrt.backbone import ForwardBatch
from graphrt.frontends.models.checkpoint import init_random_
from graphrt.frontends.models.config import default_test_config
from graphrt.frontends.models.kvcache import RowKVCache
from graphrt.frontends.models.transformer import Transformer, TransformerBackbone

F64 = torch.float64
# head_dim 64, 2 KV heads: one layer's K for one token is 2 * 64 * 8 = 1024 bytes.
CFG = dict(hidden_size=32, num_attention_heads=2, num_key_value_heads=2, head_dim=64, num_hidden_layers=2,
           max_position_embeddings=512)


def _forward_bytes(bb: TransformerBackbone, prefix: int, L: int, kind: str, write: bool) -> int:
    """Bytes allocated by one forward of ``L`` tokens over a ``prefix``-token row."""
    (row,) = bb.alloc_rows(1)
    g = torch.Generator().manual_seed(prefix)
    full = torch.ones(1, prefix, dtype=torch.bool)
    bb.forward(ForwardBatch([row], torch.randint(0, 96, (1, prefix), generator=g), torch.arange(prefix)[None],
                            full[0].expand(prefix, prefix).tril()[None], "causal", full, ~full, full))
    ones = torch.ones(1, L, dtype=torch.bool)
    att = torch.ones(L, L, dtype=torch.bool)
    att = att.tril() if kind == "causal" else att
    batch = ForwardBatch([row], torch.randint(0, 96, (1, L), generator=g), torch.arange(prefix, prefix + L)[None],
                         att[None], kind, ones if write else ~ones, ~ones, ones)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        bb.forward(batch)
    bb.free_rows([row])
    return sum(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0)


@pytest.mark.parametrize("L,kind,write", [(1, "causal", True), (4, "causal", True), (4, "bidirectional", False)])
def test_forward_bytes_do_not_grow_with_the_cached_prefix(L: int, kind: str, write: bool) -> None:
    cfg = default_test_config(**CFG)
    bb = TransformerBackbone(init_random_(Transformer(cfg), 0).to(F64).eval(), max_rows=1)
    short, long = 32, 288
    growth = (_forward_bytes(bb, long, L, kind, write) - _forward_bytes(bb, short, L, kind, write)) / (long - short)
    heads, layers, elem = cfg.num_attention_heads, cfg.num_hidden_layers, 8
    attention_rows = 3 * layers * heads * L * elem  # scores + probabilities (+ slack) per key
    mask = 16 * L  # the call's [L, keys] mask and its per-head copy, bool
    one_layer_k = cfg.num_key_value_heads * cfg.head_dim * elem
    assert attention_rows + mask < one_layer_k  # the bound below separates "in place" from "copied"
    assert growth <= attention_rows + mask, (
        f"a {L}-token {kind} forward allocates {growth:.0f} bytes per cached token; expected at most "
        f"{attention_rows + mask} (attention rows + mask), a prefix copy costs >= {one_layer_k}")


def _scattered_call_bytes(capacity: int, n_rows: int) -> tuple[int, torch.Tensor]:
    """Bytes allocated by a 1-token call of the first and the last of ``n_rows`` rows (not a contiguous
    range: spread over the range for 3 rows, gathered for 5) after 16-token prefills, in a backbone whose
    rows hold ``capacity`` slots; and that call's logits."""
    cfg = default_test_config(**CFG)
    bb = TransformerBackbone(init_random_(Transformer(cfg), 0).to(F64).eval(), max_rows=n_rows,
                             row_capacity=capacity)
    rows = bb.alloc_rows(n_rows)
    g = torch.Generator().manual_seed(0)
    full = torch.ones(1, 16, dtype=torch.bool)
    for r in rows:
        bb.forward(ForwardBatch([r], torch.randint(0, 96, (1, 16), generator=g), torch.arange(16)[None],
                                full[0].expand(16, 16).tril()[None], "causal", full, ~full, full))
    one = torch.ones(2, 1, dtype=torch.bool)
    batch = ForwardBatch([rows[0], rows[-1]], torch.tensor([[5], [6]]), torch.full((2, 1), 16),
                         torch.ones(2, 1, 1, dtype=torch.bool), "causal", one, ~one, one)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        logits = bb.forward(batch)
    return sum(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0), logits


@pytest.mark.parametrize("n_rows", [3, 5])
def test_scattered_rows_copy_nothing_proportional_to_their_capacity(n_rows: int) -> None:
    small, big = 64, 448
    (bytes_small, logits_small), (bytes_big, logits_big) = (_scattered_call_bytes(small, n_rows),
                                                            _scattered_call_bytes(big, n_rows))
    torch.testing.assert_close(logits_big, logits_small, rtol=0, atol=1e-12)
    cfg = default_test_config(**CFG)
    per_slot = 2 * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * 8  # K and V, 2 rows
    assert bytes_big - bytes_small < per_slot * (big - small) / 8, (
        f"a call of two scattered rows allocates {bytes_big - bytes_small} more bytes at row capacity {big} "
        f"than at {small}; gathering whole rows costs {per_slot * (big - small)}")


def test_padding_of_a_long_row_needs_no_scratch_slots() -> None:
    """A decoding row near its capacity packed with a wide prefill: the decode row's padding
    tokens take no scratch slots of their own, and every real token's logits equal its solo call."""
    cfg = default_test_config(max_position_embeddings=64)  # block 4: 20 scratch slots per row
    bb = TransformerBackbone(init_random_(Transformer(cfg), 0).to(F64).eval(), max_rows=2)
    g = torch.Generator().manual_seed(0)
    long_ids, short_ids = torch.randint(0, 90, (60,), generator=g), torch.randint(0, 90, (40,), generator=g)

    def call(rows: list[int], seqs: list[torch.Tensor], starts: list[int]) -> torch.Tensor:
        L = max(s.numel() for s in seqs)
        B = len(rows)
        tokens, positions = torch.zeros(B, L, dtype=torch.long), torch.zeros(B, L, dtype=torch.long)
        valid = torch.zeros(B, L, dtype=torch.bool)
        for b, (s, p) in enumerate(zip(seqs, starts)):
            tokens[b, :s.numel()], positions[b, :s.numel()] = s, torch.arange(p, p + s.numel())
            valid[b, :s.numel()] = True
        att = torch.ones(L, L, dtype=torch.bool).tril().expand(B, L, L)
        return bb.forward(ForwardBatch(rows, tokens, positions, att, "causal" if valid.all() else "mask",
                                       valid.clone(), torch.zeros(B, L, dtype=torch.bool), valid))

    a, b = bb.alloc_rows(2)
    call([a], [long_ids], [0])
    nxt = torch.tensor([7])
    packed = call([a, b], [nxt, short_ids], [60, 0])  # row a: 1 real token + 39 padding tokens
    bb.crop(b, 0)
    solo_short = call([b], [short_ids], [0])
    bb.crop(a, 60)
    solo_next = call([a], [nxt], [60])
    torch.testing.assert_close(packed[0, :1], solo_next[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(packed[1], solo_short[0], rtol=0, atol=1e-12)


def test_last_only_logits_equal_the_last_valid_rows_of_all_logits() -> None:
    """``logits="last"``: the head runs on each row's last valid token only; ragged rows (right-padded,
    attended causally without a mask) give the rows ``logits="all"`` gives at those tokens, and so does
    the same prefill attended through the explicit mask."""
    cfg = default_test_config(max_position_embeddings=64)
    bb = TransformerBackbone(init_random_(Transformer(cfg), 0).to(F64).eval(), max_rows=2)
    g = torch.Generator().manual_seed(1)
    lengths = [9, 5]
    L, B = max(lengths), len(lengths)
    tokens = torch.randint(0, 90, (B, L), generator=g)
    valid = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]  # [B, L], right-padded
    causal = torch.ones(L, L, dtype=torch.bool).tril().expand(B, L, L)

    def prefill(logits: str, attention: torch.Tensor) -> torch.Tensor:
        rows = bb.alloc_rows(B)
        out = bb.forward(ForwardBatch(rows, tokens, torch.arange(L).expand(B, L), attention, "mask", valid.clone(),
                                      torch.zeros(B, L, dtype=torch.bool), valid, logits))
        assert [bb.cache_length(r) for r in rows] == lengths
        bb.free_rows(rows)
        return out

    everything, last = prefill("all", causal), prefill("last", causal)
    assert last.shape == (B, 1, cfg.vocab_size)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(last[b, 0], everything[b, n - 1], rtol=0, atol=1e-12)
    bb._causal_prefill = lambda batch, plan: False  # the same prefill through the explicit mask
    torch.testing.assert_close(prefill("last", causal), last, rtol=0, atol=1e-12)


def _resident_mib() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from /proc")
def test_a_cpu_cache_is_resident_only_where_written() -> None:
    """Rows sized for 8192 tokens cost memory for the slots written, not for their capacity.

    Each (row, head) run of a layer is 2 MiB here, so a storage backed by transparent huge pages
    (numpy's allocator asks for them) makes a 16-token row cost up to 2 MiB per layer, K/V and head
    (96 MiB); small pages cost it a few KiB each.
    """
    before = _resident_mib()
    cache = RowKVCache(rows=4, layers=8, kv_heads=3, capacity=8192, head_dim=64)  # 480 MiB of storage
    storage = sum(t.numel() * t.element_size() for t in cache._k + cache._v) / 2**20
    assert storage > 400 and _resident_mib() - before < 16
    for t in cache._k + cache._v:
        t[0, :, :16] = 1.0  # a 16-token row: a page or two per layer, K/V and head
    assert _resident_mib() - before < 16
    assert float(cache._v[3][1:].abs().sum()) == 0.0  # reads as zeros
