"""Drafter training on a frozen base: the adapter trains, the base and AR decoding do not change."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import graphrt
from graphrt.api import prepare
from graphrt.frontends.models.checkpoint import load_checkpoint, save_adapter
from graphrt.frontends.cli.streaming import stream_generate
from graphrt.frontends.models.config import ADAPTER_MODULES
from graphrt.frontends.fixtures import write_transformers_checkpoint
from graphrt.frontends.training.drafter import build_drafter, drafter_losses
from graphrt.frontends.training.objective import build_batch, compute_losses
from graphrt.frontends.training.command import parse_args
from graphrt.frontends.models.transformer import Transformer


@pytest.fixture()
def drafter(tmp_path: Path) -> tuple[Transformer, Transformer]:
    """A random base checkpoint (with a tokenizer) and a drafter built on it with a non-trivial adapter."""
    root = write_transformers_checkpoint("llama", tmp_path / "base")  # an AR model that never saw a mask
    _, base = load_checkpoint(root, dtype=torch.float32)
    args = parse_args(["--init-from", str(root), "--adapter-rank", "4", "--mask-token", "3"])
    model, _ = build_drafter(args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # B starts at zero: make the adapter do something
    return base, model


def test_only_the_adapter_trains_and_it_covers_every_projection(drafter: tuple[Transformer, Transformer]) -> None:
    base, model = drafter
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n == "encoder.mask_embedding" for n in trainable)
    assert {n.split(".")[-3] for n in trainable if ".lora_" in n} == set(ADAPTER_MODULES)
    assert model.config.adapter_targets == ADAPTER_MODULES and model.config.draft_adapter["mask_embedding"]


@pytest.mark.parametrize("distill", [0.0, 0.7])
def test_two_pass_losses_and_gradients_equal_the_packed_forward(drafter: tuple[Transformer, Transformer],
                                                                distill: float) -> None:
    """drafter_losses (clean part without autograd, then the blocks over its K/V) == compute_losses."""
    _, model = drafter
    model.double()
    gen = torch.Generator().manual_seed(3)
    clean = torch.randint(10, model.config.vocab_size, (3, 20), generator=gen)
    batch = build_batch(clean, 4, 3, model.config.mask_token_id, gen, 0.5, seedless_prob=0.3)
    ref = compute_losses(model, batch, distill, autocast=False)
    ref["diff"].backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    got = drafter_losses(model, batch, distill)
    got["diff"].backward()
    assert torch.allclose(got["diff"], ref["diff"], rtol=1e-10) and torch.allclose(got["diff_true"], ref["diff_true"])
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, want[n], rtol=1e-7, atol=1e-12), n


def test_the_adapter_leaves_clean_tokens_on_the_base_weights(drafter: tuple[Transformer, Transformer]) -> None:
    base, model = drafter
    tokens = torch.randint(10, model.config.vocab_size, (2, 9))
    pos = torch.arange(9).expand(2, 9)
    causal = torch.ones(9, 9, dtype=torch.bool).tril().expand(2, 9, 9)
    with torch.no_grad():
        assert torch.equal(model.forward_dense(tokens, pos, causal, tokens == model.config.mask_token_id),
                           base.forward_dense(tokens, pos, causal))


@pytest.fixture()
def base_with_drafter(tmp_path: Path, drafter: tuple[Transformer, Transformer]) -> Path:
    """The base checkpoint with the drafter's adapter saved beside it, as ``graphrt train`` writes it."""
    _, model = drafter
    save_adapter(model.float(), tmp_path / "base" / "drafter")
    return tmp_path / "base"


@pytest.mark.parametrize("mode", ["ar", "diffusion", "self-spec", "self-spec-quadratic", "self-spec-lookup"])
def test_the_adapter_never_touches_prefill_or_verify_forwards(base_with_drafter: Path, mode: str) -> None:
    """Tokens whose K/V a forward writes (prefill, verification, the quadratic mode's chain, a diffusion block's
    final causal pass) never get the adapter; it applies to mask tokens only, in draft and denoise forwards
    (diffusion too: the adapter taught the base its masks). And every lossless mode gives AR's output."""
    model = graphrt.load(base_with_drafter, dtype="float64")
    mask_id = model.config.mask_token_id
    compiled, ids, params = prepare(model, prompt="def f(x):", mode=mode, max_new_tokens=12, ignore_eos=True)
    result, trace = stream_generate(model, compiled, ids, params, trace=True)
    adapted = 0
    for r in trace.forwards:
        assert not any(w and a for w, a in zip(r.kv_write, r.adapter)), r  # a written K/V is the base model's
        assert all(t == mask_id for t, a in zip(r.tokens, r.adapter) if a), r
        adapted += sum(r.adapter)
    assert (adapted > 0) == (mode != "ar")
    if mode != "diffusion":
        assert result.tokens == graphrt.generate(model, "def f(x):", mode="ar", max_new_tokens=12,
                                                 ignore_eos=True).tokens


def test_training_continues_from_a_saved_drafter(tmp_path: Path, drafter: tuple[Transformer, Transformer]) -> None:
    _, model = drafter
    save_adapter(model, tmp_path / "saved")
    args = parse_args(["--init-from", str(tmp_path / "base"), "--adapter-rank", "4", "--mask-token", "3",
                       "--init-adapter", str(tmp_path / "saved")])
    again, _ = build_drafter(args)
    want = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert want and all(torch.equal(p, want[n]) for n, p in again.named_parameters() if p.requires_grad)
    args = parse_args(["--init-from", str(tmp_path / "base"), "--adapter-rank", "8", "--mask-token", "3",
                       "--init-adapter", str(tmp_path / "saved")])
    with pytest.raises(ValueError, match=r"--init-adapter .*: expected an adapter of rank, modules and mask token "
                                         r"\(8, .*found \(4, "):
        build_drafter(args)
