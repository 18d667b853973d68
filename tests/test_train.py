"""``graphrt train``: the packed mask mirrors inference, losses fall, resume is exact, logs are written."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from graphrt.frontends.training import corpus
from graphrt.frontends.models.checkpoint import load_checkpoint
from graphrt.frontends.models.config import default_test_config
from graphrt.frontends.models.tokenizer import Tokenizer, save_tokenizer, train_tokenizer
from graphrt.frontends.training.objective import block_training_mask, build_batch, compute_losses
from graphrt.frontends.training.command import add_parser, parse_args
from graphrt.frontends.training.loop import (
    CSV_FIELDS, block_schedule, load_init_weights_, lr_at, model_config, self_generated_pool, train,
)
from graphrt.frontends.training.measure import draft_mask, measure_drafts
from graphrt.frontends.models.transformer import Transformer

TINY = ["--hidden", "32", "--layers", "2", "--heads", "2", "--kv-heads", "1", "--head-dim", "16",
        "--intermediate", "64", "--seq-len", "48", "--batch-size", "4", "--block-size", "4",
        "--blocks-per-seq", "3", "--eval-windows", "4", "--draft-prompts", "4", "--draft-prefix-len", "12",
        "--warmup", "5", "--lr", "1e-2", "--log-every", "1", "--eval-every", "6", "--ckpt-every", "100",
        "--distill-after", "4", "--minutes", "0", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tokenizer, np.ndarray, np.ndarray, dict]:
    files = corpus.load_corpus()
    train_files = corpus.split_texts(files, "train")[:40]
    held_files = corpus.split_texts(files, "heldout")[:3]
    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(train_tokenizer([f.text for f in train_files], vocab_size=300), out)
    tok = Tokenizer.from_dir(out)

    def stream(fs: list[corpus.SourceFile]) -> np.ndarray:
        return np.concatenate([np.asarray([tok.bos_id] + x + [tok.eos_id], dtype=np.uint16)
                               for x in tok.encode_batch([f.text for f in fs])])

    return tok, stream(train_files), stream(held_files), corpus.corpus_info(files)


def _args(out: Path, *extra: str) -> argparse.Namespace:
    return parse_args(["--out", str(out), *TINY, *extra])


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- the mask
def test_packed_mask_is_causal_prefix_plus_bidirectional_block() -> None:
    L, b = 10, 3
    starts = torch.tensor([[1, 7], [4, 4]])
    mask = block_training_mask(L, starts, b)  # [2, 16, 16]
    assert mask.shape == (2, L + 2 * b, L + 2 * b) and mask.dtype == torch.bool
    for r in range(2):
        assert torch.equal(mask[r, :L, :L], torch.ones(L, L, dtype=torch.bool).tril())
        assert not mask[r, :L, L:].any()  # the clean sequence never sees a block
        for k in range(2):
            p = int(starts[r, k])
            q = slice(L + k * b, L + (k + 1) * b)
            expect_clean = torch.arange(L) < p  # the clean prefix x_0..x_{p-1}, not the block's own clean tokens
            assert torch.equal(mask[r, q, :L], expect_clean.expand(b, L))
            own = torch.zeros(2 * b, dtype=torch.bool)
            own[k * b:(k + 1) * b] = True  # bidirectional within the block, blind to other blocks
            assert torch.equal(mask[r, q, L:], own.expand(b, 2 * b))


def test_build_batch_seeds_masks_and_positions() -> None:
    gen = torch.Generator().manual_seed(0)
    B, L, b, nb, MASK = 6, 20, 4, 5, 99
    clean = torch.randint(0, 50, (B, L), generator=gen)
    batch = build_batch(clean, b, nb, MASK, gen, full_mask_prob=0.5)
    T = L + nb * b
    assert batch.tokens.shape == batch.positions.shape == (B, T)
    assert torch.equal(batch.tokens[:, :L], clean)
    assert torch.equal(batch.positions[:, :L], torch.arange(L).expand(B, L))
    assert torch.equal(batch.mask, block_training_mask(L, batch.starts, b))
    assert ((batch.starts >= 1) & (batch.starts <= L - b)).all()
    pos = batch.positions[:, L:].view(B, nb, b)
    assert torch.equal(pos, batch.starts[..., None] + torch.arange(b))
    blk = batch.tokens[:, L:].view(B, nb, b)
    masked = batch.masked.view(B, nb, b)
    assert torch.equal(batch.block_targets.view(B, nb, b), torch.gather(clean, 1, pos.view(B, -1)).view(B, nb, b))
    assert not masked[..., 0].any()  # slot 0 is the clean seed
    assert torch.equal(blk[..., 0], batch.block_targets.view(B, nb, b)[..., 0])
    assert torch.equal(blk == MASK, masked)
    n = masked.sum(-1)
    assert ((n >= 1) & (n <= b - 1)).all()
    full = build_batch(clean, b, nb, MASK, gen, full_mask_prob=1.0)
    assert full.masked.view(B, nb, b)[..., 1:].all()  # [seed, MASK x (b-1)]: what self-speculation drafts
    assert not full.masked.view(B, nb, b)[..., 0].any()
    seedless = build_batch(clean, b, nb, MASK, gen, full_mask_prob=0.0, seedless_prob=1.0)
    assert seedless.masked.all() and (seedless.tokens[:, L:] == MASK).all()  # quadratic mask rows
    assert torch.equal(seedless.mask, block_training_mask(L, seedless.starts, b))


def _f64_model_and_windows(rows: int, length: int, seed: int) -> tuple:
    """A float64 test model (torch seed 0), a generator seeded ``seed`` and random windows drawn from it."""
    torch.manual_seed(0)
    cfg = default_test_config()
    gen = torch.Generator().manual_seed(seed)
    return cfg, Transformer(cfg).double(), gen, torch.randint(4, 90, (rows, length), generator=gen)


def test_packed_block_logits_equal_an_inference_draft_forward() -> None:
    """A block's logits in the packed row equal a draft forward over [prefix, block] alone."""
    cfg, model, gen, clean = _f64_model_and_windows(rows=2, length=16, seed=1)
    L, b = 16, 4
    batch = build_batch(clean, b, 3, cfg.mask_token_id, gen, 0.5)
    with torch.no_grad():
        packed = model.forward_dense(batch.tokens, batch.positions, batch.mask)  # [2, T, V]
        for r in range(2):
            for k in range(3):
                p = int(batch.starts[r, k])
                blk = batch.tokens[r, L + k * b:L + (k + 1) * b]
                tokens = torch.cat((clean[r, :p], blk))[None]
                alone = model.forward_dense(tokens, torch.arange(p + b)[None], draft_mask(p, b, 1))
                torch.testing.assert_close(packed[r, L + k * b:L + (k + 1) * b], alone[0, p:], rtol=0, atol=1e-10)
            causal = model.forward_dense(clean[r:r + 1], torch.arange(L)[None],
                                         torch.ones(L, L, dtype=torch.bool).tril()[None])
            torch.testing.assert_close(packed[r, :L], causal[0], rtol=0, atol=1e-10)


def test_measure_drafts_reports_per_slot_agreement() -> None:
    torch.manual_seed(0)
    cfg = default_test_config()
    model = Transformer(cfg)
    prefixes = torch.randint(4, 90, (5, 8))
    d = measure_drafts(model, prefixes, 4, cfg.mask_token_id)
    assert len(d["slot_agree"]) == 3 and sum(d["accept_hist"]) == 5
    q = d["quadratic"]
    assert len(q["slot_agree"]) == 3 and sum(q["accept_hist"]) == 5
    assert q["tpf_estimate"] == pytest.approx(q["mean_accepted"] + 1, abs=1e-3)
    assert d["linear_tpf_estimate"] == pytest.approx((d["mean_accepted"] + 1) / 2, abs=1e-3)


def test_lr_schedule_warms_up_holds_and_decays() -> None:
    assert lr_at(0, 1.0, 10, 80, 100) == pytest.approx(0.1)
    assert lr_at(50, 1.0, 10, 80, 100) == 1.0
    assert lr_at(100, 1.0, 10, 80, 100) == pytest.approx(0.02)


# ----------------------------------------------------------------------------- the loop
def test_tiny_run_learns_and_writes_logs_and_model(data: tuple, tmp_path: Path) -> None:
    tok, tr, ho, info = data
    res = train(_args(tmp_path, "--steps", "24", "--distill", "0.5"), tok, tr, ho, info)
    rows = _rows(tmp_path / "train_log.csv")
    assert list(rows[0]) == list(CSV_FIELDS) and len(rows) == 24
    first = np.mean([float(r["loss"]) for r in rows[:3]])
    last = np.mean([float(r["loss"]) for r in rows[-3:]])
    assert last < first - 0.5, (first, last)
    assert float(rows[-1]["diff_true_loss"]) < float(rows[0]["diff_true_loss"])
    assert rows[5]["heldout_ar_loss"] != "" and rows[4]["heldout_ar_loss"] == ""
    png = (tmp_path / "loss_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    model_dir = Path(res["model"])
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["model_type"] == "nemotron_labs_diffusion" and cfg["dlm_paradigm"] == "block_diff"
    assert cfg["mask_token_id"] == tok.mask_id and cfg["block_size"] == 4
    config, model = load_checkpoint(model_dir)
    assert config.vocab_size == tok.vocab_size
    assert Tokenizer.from_dir(model_dir).mask_id == tok.mask_id
    record = json.loads((model_dir / "training_record.json").read_text())
    assert record["corpus_sha256"] == info["sha256"] and record["python_version"] == info["python_version"]
    assert record["steps"] == 24 and "slot_agree" in record["final"]["drafts"]


def test_resume_reproduces_the_uninterrupted_run(data: tuple, tmp_path: Path) -> None:
    tok, tr, ho, info = data
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(_args(straight, "--steps", "10"), tok, tr, ho, info)
    first = train(_args(split, "--steps", "10", "--stop-after", "5"), tok, tr, ho, info)
    assert first["steps"] == 5 and first["model"] is None
    assert len(_rows(split / "train_log.csv")) == 5
    train(_args(split, "--steps", "10", "--resume"), tok, tr, ho, info)
    a, b = _rows(straight / "train_log.csv"), _rows(split / "train_log.csv")
    for ra, rb in zip(a, b):
        ra.pop("elapsed_s"), rb.pop("elapsed_s")
    assert a == b
    _, ma = load_checkpoint(straight / "model")
    _, mb = load_checkpoint(split / "model")
    for (n, pa), pb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(pa, pb), n


def test_resume_rejects_another_architecture(data: tuple, tmp_path: Path) -> None:
    tok, tr, ho, info = data
    train(_args(tmp_path, "--steps", "2", "--stop-after", "1"), tok, tr, ho, info)
    bad = _args(tmp_path, "--steps", "2", "--resume")
    bad.hidden = 48
    with pytest.raises(ValueError, match="trained with --hidden=32, found --hidden=48"):
        train(bad, tok, tr, ho, info)


def test_train_subcommand_is_registered() -> None:
    parser = argparse.ArgumentParser(prog="graphrt")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--out", "x", "--steps", "7", "--block-size", "4"])
    assert (args.out, args.steps, args.block_size) == ("x", 7, 4)
    assert callable(args.func)


# ----------------------------------------------------------------------------- continued training
def test_self_generated_rows_start_blocks_late_and_skip_the_ar_loss() -> None:
    cfg, model, gen, clean = _f64_model_and_windows(rows=3, length=16, seed=3)
    L, b = 16, 4
    min_start = torch.tensor([1, 1, 9])
    ar_rows = torch.tensor([True, True, False])
    batch = build_batch(clean, b, 5, cfg.mask_token_id, gen, 0.5, 0.0, min_start=min_start, ar_rows=ar_rows)
    assert (batch.starts[2] >= 9).all() and (batch.starts <= L - b).all() and (batch.starts >= 1).all()
    assert torch.equal(batch.mask, block_training_mask(L, batch.starts, b))
    mixed = compute_losses(model, batch, autocast=False)
    real = build_batch(clean[:2], b, 5, cfg.mask_token_id, torch.Generator().manual_seed(0))
    alone = compute_losses(model, real, autocast=False)
    torch.testing.assert_close(mixed["ar"], alone["ar"])  # the generated row adds nothing to the AR loss


def test_block_schedule_cycles_lengths_at_a_constant_token_count() -> None:
    args = parse_args(["--block-size", "8", "--blocks-per-seq", "4", "--block-sizes", "4,8"])
    assert [block_schedule(args, s) for s in range(3)] == [(4, 8), (8, 4), (4, 8)]
    assert block_schedule(parse_args(["--block-size", "8"]), 5) == (8, 8)


def test_self_generated_pool_is_the_greedy_continuation(data: tuple) -> None:
    tok, tr, _, _ = data
    args = _args(Path("unused"), "--self-gen-pool", "3", "--self-gen-len", "5")
    torch.manual_seed(0)
    cfg = default_test_config(vocab_size=tok.vocab_size, max_position_embeddings=48)
    model = Transformer(cfg).double()
    pool = self_generated_pool(model, tr, args, step=0)
    toks = pool["tokens"]
    assert toks.shape == (3, 48) and pool["start"] == 43
    with torch.no_grad():
        causal = torch.ones(47, 47, dtype=torch.bool).tril().expand(3, 47, 47)
        logits = model.forward_dense(toks[:, :47], torch.arange(47).expand(3, 47), causal)
    assert torch.equal(logits[:, 42:].argmax(-1), toks[:, 43:])  # each generated token is the AR argmax


def test_continued_run_starts_from_the_checkpoint_and_resumes_exactly(data: tuple, tmp_path: Path) -> None:
    tok, tr, ho, info = data
    base = train(_args(tmp_path / "base", "--steps", "2"), tok, tr, ho, info)
    extra = ["--steps", "6", "--block-sizes", "2,4", "--seedless-prob", "0.25", "--self-gen-rows", "2",
             "--self-gen-pool", "3", "--self-gen-len", "6", "--self-gen-every", "3", "--init-from", base["model"],
             "--export-every", "3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(_args(straight, *extra), tok, tr, ho, info)
    train(_args(split, *extra, "--stop-after", "4"), tok, tr, ho, info)
    running = json.loads((split / "model" / "training_record.json").read_text())
    assert running["stop_reason"] == "running" and running["steps"] == 3 and running["resume"]["step"] == 3
    train(_args(split, *extra, "--resume"), tok, tr, ho, info)
    a, b = _rows(straight / "train_log.csv"), _rows(split / "train_log.csv")
    for ra, rb in zip(a, b):
        ra.pop("elapsed_s"), rb.pop("elapsed_s")
    assert a == b and len(a) == 6
    record = json.loads((straight / "model" / "training_record.json").read_text())
    assert record["init_from_record"]["steps"] == 2 and set(record["final"]["drafts_by_block"]) == {"2", "4"}
    model = Transformer(load_checkpoint(straight / "model")[0])
    load_init_weights_(model, base["model"])  # same architecture: accepted
    small = _args(tmp_path, "--hidden", "48")
    with pytest.raises(ValueError, match="another architecture than the arguments: hidden_size=32"):
        load_init_weights_(Transformer(model_config(small, tok)), base["model"])
