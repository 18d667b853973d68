"""Prepacked linear layers: the same products as ``F.linear`` (float32 rounding), the same tokens as eager.

The blocked product sums in another order than MKL's, so logits agree to float32 rounding
(not bit for bit); greedy tokens are compared where the margin between the top two logits is clear.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphrt
from graphrt.backbone import ForwardBatch
from graphrt.frontends.models.checkpoint import init_random_
from graphrt.frontends.models.config import default_test_config
from graphrt.frontends.models.packed_linear import (FusedProduct, PackedLinear, PackedSlice,
                                                     prepack, resolve_linear)
from graphrt.frontends.models.transformer import LoRALinear, Transformer, TransformerBackbone, causal_mask

F32 = torch.float32


def make_model(seed: int = 0, **overrides) -> Transformer:
    return init_random_(Transformer(default_test_config(**overrides)), seed).to(F32).eval()


@pytest.mark.parametrize("rows", [1, 2, 3, 7, 16, 33])
@pytest.mark.parametrize("shape", [(32, 96), (13, 5), (576, 192)])
def test_packed_linear_equals_f_linear(rows: int, shape: tuple[int, int]) -> None:
    fan_in, fan_out = shape
    g = torch.Generator().manual_seed(rows)
    lin = nn.Linear(fan_in, fan_out, bias=True)
    x = torch.randn(2, rows, fan_in, generator=g)  # [B, L, in]
    want = F.linear(x, lin.weight, lin.bias)
    torch.testing.assert_close(PackedLinear(lin)(x), want, rtol=1e-5, atol=1e-5)


def test_lora_applied_where_selected_only() -> None:
    lin = LoRALinear(24, 40, rank=4, alpha=8)
    nn.init.normal_(lin.lora_B.weight)
    packed = PackedLinear(lin)
    x = torch.randn(1, 5, 24)
    sel = torch.tensor([[False, True, False, True, True]])
    with torch.no_grad():
        torch.testing.assert_close(packed(x, sel), lin(x, sel), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed(x), lin(x), rtol=1e-5, atol=1e-5)


def test_fused_slices_equal_separate_products_and_follow_in_place_updates() -> None:
    lins = [nn.Linear(16, n, bias=False) for n in (16, 8, 8)]
    product = FusedProduct(lins)
    slices = [PackedSlice(product, start, lin) for start, lin in zip((0, 16, 24), lins)]
    x = torch.randn(3, 16)
    for s, lin in zip(slices, lins):
        torch.testing.assert_close(s(x), F.linear(x, lin.weight), rtol=1e-5, atol=1e-5)
    x.mul_(2)  # same tensor, new contents: the kept product must not be reused
    torch.testing.assert_close(slices[1](x), F.linear(x, lins[1].weight), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("width, outs, ranks", [(16, (16, 8, 8), (4, None, 2)), (24, (20, 7, 13), (3, None, 5))],
                         ids=["whole-blocks", "shared-blocks"])
def test_fused_lora_on_part_of_a_group_equals_each_projections_own(width: int, outs: tuple[int, ...],
                                                                    ranks: tuple[int | None, ...]) -> None:
    """q and v adapted, k not: one stacked A, one block-diagonal B; each projection's columns get its own delta
    (also where widths that are not whole 16-column blocks share a block of B), unselected rows exactly the base."""
    g = torch.Generator().manual_seed(7)
    lins = [LoRALinear(width, n, rank=r, alpha=None if r is None else 2 * r) for n, r in zip(outs, ranks)]
    for lin in lins:
        if lin.lora_B is not None:
            nn.init.normal_(lin.lora_B.weight, generator=g)
    product = FusedProduct(lins)
    assert product.lora is not None and product.lora.rank == sum(r for r in ranks if r)
    starts = [sum(outs[:i]) for i in range(len(outs))]
    slices = [PackedSlice(product, start, lin) for start, lin in zip(starts, lins)]
    x = torch.randn(2, 3, width, generator=g)
    sel = torch.tensor([[True, False, True], [False, False, True]])
    with torch.no_grad():
        for s, lin in zip(slices, lins):
            torch.testing.assert_close(s(x, sel), lin(x, sel), rtol=1e-5, atol=1e-5)
            assert torch.equal(s(x, sel)[~sel], s(x, torch.zeros_like(sel))[~sel])  # unselected rows: the base
        # the same input with another selection is a new product, not the kept one
        none = torch.zeros_like(sel)
        for s, lin in zip(slices, lins):
            assert torch.equal(s(x, none), slices[0].product(x)[..., s.start:s.stop])
            torch.testing.assert_close(s(x, none), F.linear(x, lin.weight), rtol=1e-5, atol=1e-5)


def test_prepack_keeps_dense_logits() -> None:
    model = make_model(seed=3, draft_adapter={"rank": 4, "alpha": 8})
    tokens = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(4))
    pos, mask = torch.arange(7).expand(2, 7), causal_mask(2, 7)
    sel = torch.zeros(2, 7, dtype=torch.bool)
    sel[:, 4:] = True
    with torch.no_grad():
        want = model.forward_dense(tokens, pos, mask, adapter=sel)
        prepack(model)
        got = model.forward_dense(tokens, pos, mask, adapter=sel)
    assert isinstance(model.encoder.layers[0].self_attn.k_proj, PackedSlice)
    assert isinstance(model.diffusion_head, PackedLinear)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_backbone_packed_matches_eager_by_width() -> None:
    eager, packed = make_model(seed=5), make_model(seed=5)
    bbs = {"eager": TransformerBackbone(eager, max_rows=1, row_capacity=64),
           "packed": TransformerBackbone(packed, max_rows=1, row_capacity=64, linear="packed")}
    assert bbs["packed"].linear == "packed" and bbs["eager"].linear == "eager"
    ids = torch.randint(0, 96, (1, 40), generator=torch.Generator().manual_seed(6))
    out = {}
    for name, bb in bbs.items():
        (row,) = bb.alloc_rows(1)
        logits = []
        for start, width in ((0, 20), (20, 1), (21, 4), (25, 8), (33, 7)):
            L = width
            logits.append(bb.forward(ForwardBatch(
                rows=[row], tokens=ids[:, start:start + L], positions=torch.arange(start, start + L)[None],
                attention=torch.ones(L, L, dtype=torch.bool).tril()[None], kind="causal",
                kv_write=torch.ones(1, L, dtype=torch.bool), adapter=torch.zeros(1, L, dtype=torch.bool),
                valid=torch.ones(1, L, dtype=torch.bool))))
        out[name] = torch.cat(logits, dim=1)
    torch.testing.assert_close(out["packed"], out["eager"], rtol=1e-4, atol=1e-4)


def test_resolve_linear_paths_and_errors() -> None:
    assert resolve_linear("auto", F32, "cpu") == "packed"
    assert resolve_linear("auto", torch.float64, "cpu") == "eager"
    assert resolve_linear("auto", F32, "cpu", compile=True) == "eager"
    assert resolve_linear("packed", F32, "cpu") == "packed"
    assert graphrt.load(max_batch=1).backbone.linear == "packed"  # the 12.8 MB shipped model too
    assert graphrt.load(max_batch=1, dtype="float64").backbone.linear == "eager"
    assert resolve_linear("eager", F32, "cpu") == "eager"
    with pytest.raises(ValueError, match="linear: expected one of"):
        resolve_linear("fast", F32, "cpu")
    with pytest.raises(ValueError, match="linear='packed': expected a float32 model on the CPU.*found torch.float64"):
        TransformerBackbone(make_model().to(torch.float64), max_rows=1, row_capacity=8, linear="packed")


@pytest.mark.parametrize("mode", ["ar", "prompt-lookup"])
def test_shipped_model_tokens_equal_eager(mode: str) -> None:
    prompt = "def add(a, b):\n    return a + b\n\ndef sub(a, b):"
    runs = {}
    for linear in ("eager", "packed"):
        model = graphrt.load(dtype="float32", max_batch=1, linear=linear)
        assert model.backbone.linear == linear
        runs[linear] = graphrt.generate(model, prompt, mode=mode, max_new_tokens=24).tokens
    assert runs["packed"] == runs["eager"]


def test_a_fused_product_is_released_once_every_projection_has_it() -> None:
    """The kept product lives until the group's last projection takes its columns, not until the next call:
    kept, a prefill's products would stay resident after it (1 GB for 2,000 SmolLM2 tokens)."""
    lins = [nn.Linear(16, n, bias=False) for n in (16, 8, 8)]
    product = FusedProduct(lins)
    slices = [PackedSlice(product, start, lin) for start, lin in zip((0, 16, 24), lins)]
    x = torch.randn(3, 16)
    q, k = slices[0](x), slices[1](x)
    assert product._out is not None and q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr()
    v = slices[2](x)
    assert product._out is None and product._key is None
    torch.testing.assert_close(v, F.linear(x, lins[2].weight), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(slices[1](x), k)  # out of turn: recomputed, the same columns


def test_a_packed_model_holds_no_activation_after_a_forward() -> None:
    model = prepack(make_model(seed=5))
    tokens = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        model.forward_dense(tokens, torch.arange(7).expand(2, 7), causal_mask(2, 7))
    products = {m.product for m in model.modules() if isinstance(m, PackedSlice)}
    assert products and all(p._out is None and p._key is None for p in products)


@pytest.mark.parametrize("shape", [(960, 576), (576, 1536), (40, 24)])
def test_a_packed_row_is_the_same_at_every_row_count(shape: tuple[int, int]) -> None:
    """Lossless decoding needs a token's logits to be the same in a 1-token AR step and in a wide verification
    call, bit for bit: each row of a packed product equals that row of a wider one, and each row alone."""
    g = torch.Generator().manual_seed(11)
    weight, bias = torch.randn(shape, generator=g), torch.randn(shape[0], generator=g)
    lin = nn.Linear(shape[1], shape[0])
    with torch.no_grad():
        lin.weight.copy_(weight), lin.bias.copy_(bias)
    packed = PackedLinear(lin)
    x = torch.randn(1, 32, shape[1], generator=g)
    with torch.no_grad():
        wide = packed(x)
        for rows in range(1, 18):
            assert torch.equal(packed(x[:, :rows]), wide[:, :rows]), f"{rows} rows"
        for i in (0, 5, 8, 13, 31):  # rows in every tile position, alone
            assert torch.equal(packed(x[:, i:i + 1]), wide[:, i:i + 1]), f"row {i} alone"
        torch.testing.assert_close(wide, F.linear(x, weight, bias), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="paging out is a Linux hint")
def test_paging_out_a_checkpoint_weight_drops_its_pages_and_keeps_its_values(tmp_path) -> None:
    """What prepack does to each weight once packed: the file's pages leave resident memory (so loading does not
    hold the whole file and every packed copy at once), and the tensor still reads the same values."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from graphrt.frontends.models.packed_linear import _page_out

    weights = {f"w{i}": torch.randn(1024, 4096, generator=torch.Generator().manual_seed(i)) for i in range(4)}
    save_file(weights, str(tmp_path / "w.safetensors"))  # 64 MiB
    sums = {k: float(v.double().sum()) for k, v in weights.items()}
    del weights

    def resident() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        loaded = {k: f.get_tensor(k) for k in f.keys()}
    before = resident()
    assert {k: float(v.double().sum()) for k, v in loaded.items()} == sums  # every page read: resident
    read = resident()
    for t in loaded.values():
        _page_out(t)
    assert resident() < read - 32, (before, read, resident())
    assert {k: float(v.double().sum()) for k, v in loaded.items()} == sums


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="paging out is a Linux hint")
def test_prepack_leaves_a_mapped_embedding_out_of_resident_memory(tmp_path) -> None:
    """A tied embedding read from a checkpoint's memory map stays there once its head is packed, paged out: a
    lookup reads back only its rows' pages (SmolLM2: 113 MB fewer resident), and the logits do not change."""
    from graphrt.frontends.models.checkpoint import load_checkpoint, save_checkpoint
    from graphrt.frontends.models.packed_linear import prepack

    cfg = default_test_config(vocab_size=16384, hidden_size=256, intermediate_size=64, num_attention_heads=2,
                              num_key_value_heads=1, head_dim=64, tie_word_embeddings=True, mask_token_id=16383)
    save_checkpoint(init_random_(Transformer(cfg), 0), cfg, tmp_path / "ckpt")  # embedding: 16 MiB
    _, eager = load_checkpoint(tmp_path / "ckpt", dtype=torch.float32)
    _, packed = load_checkpoint(tmp_path / "ckpt", dtype=torch.float32)
    prepack(packed)
    tokens = torch.tensor([[5, 900, 16000, 7]])
    mask = causal_mask(1, 4)
    with torch.no_grad():
        torch.testing.assert_close(packed.forward_dense(tokens, torch.arange(4)[None], mask),
                                   eager.forward_dense(tokens, torch.arange(4)[None], mask), rtol=1e-4, atol=1e-4)

    def resident() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    embedding = packed.encoder.embed_tokens.weight
    before = resident()
    float(embedding.double().sum())  # every row read
    assert resident() - before > 12, f"the 16 MiB embedding was resident already ({before:.0f} -> {resident():.0f})"
