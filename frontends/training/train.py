"""``graphrt train``: train the tri-mode model on the standard library's source.

Objective (DESIGN.md, "The shipped model"): every step,
``L = L_AR + 0.3 * L_diffusion`` on one packed forward per batch row.

Row layout (one ``forward_dense`` call, ``T = L + n_blocks * b`` tokens)::

    [ x_0 ... x_{L-1} | block_0 (b tokens) | block_1 | ... ]
      clean sequence,    extra query tokens, one group per block
      causal             block_k sits at positions p_k .. p_k+b-1

* The clean part attends causally to itself (never to a block): its logits at
  ``i`` give the AR loss on ``x_{i+1}``.
* Block ``k`` starts at a random offset ``p_k`` in ``[1, L - b]``. Its slot 0
  holds the clean seed ``x_{p_k}``; of slots ``1..b-1``, ``n`` chosen at random
  hold the mask token, where per block ``n = b - 1`` (everything but the seed:
  what self-speculation drafts) with probability ``full_mask_prob``, else
  ``n`` uniform in ``1..b-1``. Its queries attend to the clean prefix
  ``x_0 .. x_{p_k - 1}`` and bidirectionally to the whole block; nothing else.
  That is exactly a diffusion forward at inference (cache = prefix, block =
  ``[seed, MASK...]`` partly decided), so training mirrors inference. With
  ``--seedless-prob q > 0`` a fraction ``q`` of blocks masks slot 0 as well
  (quadratic self-speculation's mask rows: ``b`` masks right after the chain).
* The diffusion loss is on masked slots, predicting their own token (no
  shift). With ``distill = w > 0`` its target mixes the true token (weight
  ``1 - w``) with the model's own AR argmax at the same position under the
  clean prefix (weight ``w``; teacher-forced self-distillation: the AR logit
  at ``p + j - 1`` predicts the token at ``p + j``; detached). Verification
  accepts drafts equal to the AR argmax, so this trains drafts toward what
  gets accepted.

Continued training (``--init-from DIR``) starts from a checkpoint's weights,
architecture and tokenizer and keeps its record as ``init_from_record``; it
trains what each mode drafts under:

* ``--block-sizes 4,8`` cycles the block length step by step (same packed
  token count), so one checkpoint drafts at more than one length;
* ``--seedless-prob`` (above) for the quadratic mode's mask rows;
* ``--self-gen-rows R`` appends ``R`` rows per batch drawn from a pool of
  sequences the model generated itself (a training prefix plus its greedy
  continuation, regenerated every ``--self-gen-every`` steps): their blocks
  lie in the generated part and carry only the diffusion loss, whose targets
  are then exactly the greedy tokens verification accepts.

The AR loss is the mean over the ``L - 1`` clean targets, the diffusion loss
the mean over masked slots. Weights train in float32 under bfloat16 autocast
(CPU); randomness is a pure function of ``(seed, step)``, so a run resumed from
its checkpoint reproduces the uninterrupted run's losses exactly.

Outputs under ``--out``: ``ckpt.pt`` (resume state), ``train_log.csv`` and
``loss_curves.png``, ``tokenizer/`` and ``data/`` (cached token streams), and
``model/``: the checkpoint in DESIGN.md's format with the tokenizer and
``training_record.json`` (corpus hash, Python version, arguments, final
held-out losses and draft quality, resume information); with
``--export-every`` it is also written during the run (``stop_reason``
``running``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import corpus as corpus_mod
from . import drafter as drafter_mod
from .objective import DIFFUSION_WEIGHT, block_training_mask, build_batch, compute_losses
from ..models.checkpoint import save_checkpoint
from ..models.config import ModelConfig
from ..models.tokenizer import Tokenizer, save_tokenizer, train_tokenizer
from ..models.transformer import Transformer

IGNORE = -100
CSV_FIELDS = (
    "step", "lr", "loss", "ar_loss", "diff_loss", "diff_true_loss", "tokens", "elapsed_s",
    "heldout_ar_loss", "heldout_diff_loss", "draft_slot1_agree", "draft_mean_accepted",
)
ARCH_ARGS = ("vocab_size", "hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate",
             "seq_len", "block_size")


# ============================================================================ data
def prepare_data(out_dir: str | Path, vocab_size: int, tokenizer_dir: str | Path | None = None,
                 tokenizer: Any = None) -> tuple[Tokenizer, np.ndarray, np.ndarray, dict[str, Any]]:
    """Corpus, tokenizer and token streams (cached under ``out_dir``).

    Each split's stream is the concatenation, in corpus order, of
    ``[bos] + encode(file) + [eos]`` for its files.

    Parameters
    ----------
    out_dir : str or Path
        Run directory; the tokenizer goes to ``out_dir/tokenizer`` and the
        streams to ``out_dir/data`` (reused when corpus and tokenizer match).
    vocab_size : int
        BPE vocabulary size when a tokenizer has to be trained.
    tokenizer_dir : str or Path, optional
        Use this trained tokenizer instead of training one.
    tokenizer : optional
        Use this tokenizer object (a base model's: ``hf``, ``encode_batch``, ``bos_id``,
        ``eos_id``, ``vocab_size``), e.g. a :class:`~graphrt.frontends.training.drafter.BaseTokenizer`.

    Returns
    -------
    tuple
        ``(tokenizer, train_stream, heldout_stream, corpus_info)``; the streams
        are ``uint16`` arrays.

    Raises
    ------
    ValueError
        If the tokenizer's vocabulary does not fit in ``uint16``.
    """
    out = Path(out_dir)
    files = corpus_mod.load_corpus()
    info = corpus_mod.corpus_info(files)
    tok_dir = out / "tokenizer"
    if tokenizer is not None:
        tok = tokenizer
        save_tokenizer(tok.hf, tok_dir)
    elif tokenizer_dir is not None:
        tok = Tokenizer.from_dir(tokenizer_dir)
        save_tokenizer(tok.hf, tok_dir)
    elif (tok_dir / "tokenizer.json").is_file():
        tok = Tokenizer.from_dir(tok_dir)
    else:
        hf = train_tokenizer((f.text for f in corpus_mod.split_texts(files, "train")), vocab_size)
        save_tokenizer(hf, tok_dir)
        tok = Tokenizer.from_dir(tok_dir)
    if tok.vocab_size > 65535:
        raise ValueError(f"prepare_data: expected a vocabulary < 65536 (uint16 streams), found {tok.vocab_size}")
    tok_hash = hashlib.sha256((tok_dir / "tokenizer.json").read_bytes()).hexdigest()
    key = f"{info['sha256']}-{tok_hash}"
    data_dir = out / "data"
    meta_path = data_dir / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key:
        train = np.load(data_dir / "train.npy")
        heldout = np.load(data_dir / "heldout.npy")
    else:
        streams = {}
        for split in ("train", "heldout"):
            part = corpus_mod.split_texts(files, split)
            ids = tok.encode_batch([f.text for f in part])
            chunks = [np.asarray([tok.bos_id] + x + [tok.eos_id], dtype=np.uint16) for x in ids]
            streams[split] = np.concatenate(chunks)
        data_dir.mkdir(parents=True, exist_ok=True)
        np.save(data_dir / "train.npy", streams["train"])
        np.save(data_dir / "heldout.npy", streams["heldout"])
        meta_path.write_text(json.dumps({"key": key, "train_tokens": int(streams["train"].size),
                                         "heldout_tokens": int(streams["heldout"].size)}) + "\n")
        train, heldout = streams["train"], streams["heldout"]
    info = dict(info, tokenizer_sha256=tok_hash, train_tokens=int(train.size), heldout_tokens=int(heldout.size))
    return tok, train, heldout, info


def token_windows(stream: np.ndarray, n: int, length: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """``n`` windows of ``length`` tokens from a stream: at random offsets drawn from ``gen``, or evenly
    spaced when ``gen`` is ``None`` (the held-out evaluation set; deterministic).

    Parameters
    ----------
    stream : np.ndarray
        Token stream (1-D).
    n, length : int
        Number and length of windows.
    gen : torch.Generator, optional
        Source of random offsets.

    Returns
    -------
    torch.Tensor
        ``[n, length]`` int64.

    Raises
    ------
    ValueError
        If the stream is shorter than ``length + 1``.
    """
    if stream.size <= length:
        raise ValueError(f"token_windows: expected a stream longer than {length} tokens, found {stream.size}")
    if gen is None:
        starts = np.linspace(0, stream.size - length - 1, n).astype(np.int64)
    else:
        starts = torch.randint(0, stream.size - length, (n,), generator=gen).numpy()
    return torch.from_numpy(np.stack([stream[s:s + length] for s in starts]).astype(np.int64))


# ============================================================================ measurement
@torch.no_grad()
def greedy_continuation(model: Transformer, prefixes: torch.Tensor, n: int, autocast: bool = False) -> torch.Tensor:
    """The model's greedy AR continuation of each prefix (causal prefill, then one cached token per forward).

    Runs through the backbone protocol (:class:`~graphrt.frontends.models.transformer.TransformerBackbone`
    and its KV cache), as decoding does.

    Parameters
    ----------
    model : Transformer
    prefixes : torch.Tensor
        ``[N, P]`` int64.
    n : int
        Tokens to generate.
    autocast : bool
        Run under bfloat16 autocast.

    Returns
    -------
    torch.Tensor
        ``[N, P + n]``: the prefixes followed by their greedy continuations.
    """
    from graphrt.backbone import ForwardBatch

    from ..models.transformer import TransformerBackbone

    N, P = prefixes.shape
    dev = model.encoder.embed_tokens.weight.device
    prefixes = prefixes.to(dev)
    backbone = TransformerBackbone(model, max_rows=N, row_capacity=P + n)
    rows = backbone.alloc_rows(N)

    def call(tokens: torch.Tensor, start: int) -> torch.Tensor:
        L = tokens.shape[1]
        ones = torch.ones(N, L, dtype=torch.bool)
        batch = ForwardBatch(rows, tokens, (start + torch.arange(L)).expand(N, L),
                             torch.ones(L, L, dtype=torch.bool).tril().expand(N, L, L), "causal", ones,
                             torch.zeros(N, L, dtype=torch.bool), ones)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            return backbone.forward(batch)[:, -1].float().argmax(-1, keepdim=True).to(dev)  # [N, 1]

    out = [prefixes, call(prefixes, 0)]
    for i in range(n - 1):
        out.append(call(out[-1], P + i))
    return torch.cat(out, dim=1)[:, :P + n]


def draft_mask(prefix_len: int, block_size: int, batch: int) -> torch.Tensor:
    """Mask of a draft forward: causal prefix, then a block over prefix + block.

    Parameters
    ----------
    prefix_len, block_size, batch : int

    Returns
    -------
    torch.Tensor
        ``[batch, P + b, P + b]`` bool.
    """
    P, b = prefix_len, block_size
    starts = torch.full((batch, 1), P, dtype=torch.long)
    return block_training_mask(P, starts, b)


def _agreement(drafts: torch.Tensor, greedy: torch.Tensor) -> dict[str, Any]:
    """Per-slot agreement and accepted-prefix statistics of drafts ``[N, k]`` against greedy ``[N, k]``."""
    agree = drafts == greedy  # [N, k]
    accepted = agree.long().cumprod(dim=1).sum(dim=1)  # [N]
    mean_k = accepted.float().mean().item()
    return {
        "slot_agree": [round(x, 4) for x in agree.float().mean(0).tolist()],
        "accept_hist": torch.bincount(accepted, minlength=drafts.shape[1] + 1).tolist(),
        "mean_accepted": round(mean_k, 4),
    }


@torch.no_grad()
def measure_drafts(model: Transformer, prefixes: torch.Tensor, block_size: int, mask_token_id: int,
                   autocast: bool = False) -> dict[str, Any]:
    """Draft quality as self-speculation sees it, against greedy AR decoding.

    For each prefix: greedy AR continuation ``g_0 .. g_b`` (``g_0`` is the
    seed, the AR token after the prefix).

    * Linear: one diffusion forward over ``[g_0, MASK x (b-1)]`` after the
      prefix gives drafts ``d_1 .. d_{b-1}`` (argmax per slot); verification
      accepts the longest run with ``d_j == g_j``. One draft and one verify
      forward per cycle, so TPF is about ``(E[k] + 1) / 2``.
    * Quadratic (TiDAR row): ``b`` masks after the causal prefix + ``g_0``
      (masks see the prefix, ``g_0`` and each other); the next block is the
      bonus ``g_1`` followed by the mask predictions ``m_2 .. m_b``, accepted
      while ``m_j == g_j``. One forward per cycle: TPF about ``E[k] + 1``.

    Parameters
    ----------
    model : Transformer
        The model (it has no dropout: no eval mode needed).
    prefixes : torch.Tensor
        ``[N, P]`` int64 prefixes.
    block_size : int
        ``b``.
    mask_token_id : int
        The mask token.
    autocast : bool
        Run under bfloat16 autocast.

    Returns
    -------
    dict
        ``slot_agree`` (``b - 1`` rates ``P(d_j == g_j)``), ``accept_hist``
        (counts of ``k = 0..b-1`` accepted drafts), ``mean_accepted``
        (``E[k]``), ``linear_tpf_estimate`` and ``quadratic`` (the same
        statistics for the quadratic drafts, with ``tpf_estimate``).
    """
    N, P = prefixes.shape
    b = block_size
    dev = model.encoder.embed_tokens.weight.device
    prefixes = prefixes.to(dev)
    greedy = greedy_continuation(model, prefixes, b + 1, autocast)[:, P:]  # [N, b+1]: g_0 .. g_b
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
        masks = torch.full((N, b), mask_token_id, device=dev)
        block = torch.cat((greedy[:, :1], masks[:, 1:]), dim=1)  # [N, b]: [g_0, MASK x (b-1)]
        ltokens = torch.cat((prefixes, block), dim=1)  # [N, P+b]
        lin = model.forward_dense(ltokens, torch.arange(P + b, device=dev).expand(N, P + b),
                                  draft_mask(P, b, N).to(dev), ltokens == mask_token_id)  # [N, P+b, V]
        qtokens = torch.cat((prefixes, greedy[:, :1], masks), dim=1)  # [N, P+1+b]
        quad = model.forward_dense(qtokens, torch.arange(P + 1 + b, device=dev).expand(N, P + 1 + b),
                                   draft_mask(P + 1, b, N).to(dev), qtokens == mask_token_id)  # [N, P+1+b, V]
    linear = _agreement(lin[:, P + 1:].float().argmax(-1), greedy[:, 1:b])
    quadratic = _agreement(quad[:, P + 2:].float().argmax(-1), greedy[:, 2:b + 1])
    quadratic["tpf_estimate"] = round(quadratic["mean_accepted"] + 1, 4)
    return dict(linear, linear_tpf_estimate=round((linear["mean_accepted"] + 1) / 2, 4),
                quadratic=quadratic, n_prefixes=N)


@torch.no_grad()
def heldout_losses(model: Transformer, windows: torch.Tensor, block_size: int, blocks_per_seq: int,
                   mask_token_id: int, full_mask_prob: float, batch_size: int = 16,
                   autocast: bool = True) -> dict[str, float]:
    """AR and diffusion loss on fixed held-out windows (fixed masks, seed 0).

    Parameters
    ----------
    model : Transformer
    windows : torch.Tensor
        ``[N, L]`` from :func:`token_windows` (evenly spaced).
    block_size, blocks_per_seq, mask_token_id : int
        As in training.
    full_mask_prob : float
        As in training.
    batch_size : int
        Windows per forward.
    autocast : bool
        Run under bfloat16 autocast.

    Returns
    -------
    dict[str, float]
        ``ar`` and ``diff`` (true targets), averaged over batches.
    """
    gen = torch.Generator().manual_seed(0)
    ar, diff, n = 0.0, 0.0, 0
    for i in range(0, windows.shape[0], batch_size):
        batch = build_batch(windows[i:i + batch_size], block_size, blocks_per_seq, mask_token_id, gen,
                            full_mask_prob)
        out = compute_losses(model, batch, 0.0, autocast)
        ar += out["ar"].item()
        diff += out["diff_true"].item()
        n += 1
    return {"ar": ar / n, "diff": diff / n}


# ============================================================================ model
def model_config(args: argparse.Namespace, tok: Tokenizer) -> ModelConfig:
    """The :class:`ModelConfig` a run trains (from the size arguments).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``train`` arguments.
    tok : Tokenizer
        The tokenizer (vocabulary size and special ids).

    Returns
    -------
    ModelConfig
    """
    cfg = ModelConfig(
        vocab_size=tok.vocab_size, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim, rms_norm_eps=1e-5, rope_theta=10000.0, rope_parameters=None,
        max_position_embeddings=args.seq_len, tie_word_embeddings=False,
        bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, mask_token_id=tok.mask_id,
        pad_token_id=tok.pad_id, block_size=args.block_size, dlm_paradigm="block_diff",
    )
    cfg.validate("train arguments")
    return cfg


def init_weights_(model: Transformer, seed: int, std: float = 0.02) -> None:
    """GPT-2 style init in place: N(0, std), residual outputs scaled by ``1/sqrt(2 * layers)``, norms 1.

    Parameters
    ----------
    model : Transformer
    seed : int
    std : float
    """
    g = torch.Generator().manual_seed(seed)
    n_layers = model.config.num_hidden_layers
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
                continue
            s = std / math.sqrt(2 * n_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else std
            p.copy_(torch.randn(p.shape, generator=g) * s)


def lr_at(step: int, peak: float, warmup: int, decay_start: int, total: int, final_frac: float = 0.02) -> float:
    """Warmup-stable-decay learning rate at ``step`` (0-based).

    Parameters
    ----------
    step : int
    peak : float
    warmup : int
        Linear warmup steps.
    decay_start, total : int
        Linear decay from ``peak`` at ``decay_start`` to ``final_frac * peak`` at ``total``.
    final_frac : float

    Returns
    -------
    float
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    if step < decay_start:
        return peak
    frac = min(1.0, (step - decay_start) / max(1, total - decay_start))
    return peak * (1 - (1 - final_frac) * frac)


# ============================================================================ logging
def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Write the loss log (one row per logging interval).

    Parameters
    ----------
    rows : list[dict]
        Rows keyed by :data:`CSV_FIELDS` (missing keys are blank).
    path : Path
    """
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_FIELDS})
    tmp.replace(path)


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """PNG of the training and held-out losses and the draft acceptance.

    Parameters
    ----------
    rows : list[dict]
        The loss log.
    path : Path
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["ar_loss"] for r in rows], label="train AR", lw=1)
    ax.plot(steps, [r["diff_true_loss"] for r in rows], label="train diffusion (true tokens)", lw=1)
    ev = [r for r in rows if r.get("heldout_ar_loss", "") != ""]
    if ev:
        ax.plot([r["step"] for r in ev], [r["heldout_ar_loss"] for r in ev], "o-", label="held-out AR")
        ax.plot([r["step"] for r in ev], [r["heldout_diff_loss"] for r in ev], "s-", label="held-out diffusion")
        ax2.plot([r["step"] for r in ev], [r["draft_mean_accepted"] for r in ev], "o-",
                 label="mean accepted drafts / cycle")
        ax2.plot([r["step"] for r in ev], [r["draft_slot1_agree"] for r in ev], "s-",
                 label="slot-1 agreement with AR")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.legend()
    ax.grid(alpha=0.3)
    ax2.set_xlabel("step")
    ax2.set_title("held-out drafts (one denoise forward, greedy AR reference)")
    if ev:
        ax2.legend()
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ============================================================================ resume state
def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_train_state(path: Path, model: Transformer, opt: torch.optim.Optimizer, step: int,
                     sched: dict[str, int], rows: list[dict[str, Any]], elapsed: float,
                     args: argparse.Namespace, pool: dict[str, Any] | None = None) -> None:
    """Write the resume checkpoint atomically.

    Parameters
    ----------
    path : Path
        ``out/ckpt.pt``.
    model, opt :
        Model and optimizer.
    step : int
        Number of completed steps.
    sched : dict
        ``decay_start`` and ``total`` of the schedule (they move under ``--minutes``).
    rows : list[dict]
        The loss log so far.
    elapsed : float
        Training seconds so far.
    args : argparse.Namespace
        The run's arguments.
    pool : dict, optional
        The self-generated sequences (see :func:`self_generated_pool`).
    """
    state = {
        "pool": pool,
        "model": drafter_mod.trainable_state(model) if args.adapter_rank else model.state_dict(),
        "optimizer": opt.state_dict(), "step": step, "sched": dict(sched),
        "rows": rows, "elapsed": elapsed, "rng": _rng_state(), "args": _args_dict(args),
        "config": model.config.to_dict(),
    }
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _args_dict(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k != "func"}


# ============================================================================ continued training
def block_schedule(args: argparse.Namespace, step: int) -> tuple[int, int]:
    """Block length and blocks per row at ``step`` (``--block-sizes`` cycle step by step).

    The packed extra tokens stay about ``blocks_per_seq * block_size`` whatever
    the length, so every step costs about the same.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``train`` arguments.
    step : int

    Returns
    -------
    tuple[int, int]
        ``(b, nb)``.
    """
    sizes = args.block_sizes or [args.block_size]
    b = sizes[step % len(sizes)]
    return b, max(1, round(args.blocks_per_seq * args.block_size / b))


def self_generated_pool(model: Transformer, stream: np.ndarray, args: argparse.Namespace, step: int,
                        ) -> dict[str, Any]:
    """Sequences the model wrote itself: a training prefix plus its greedy continuation.

    Acceptance is measured against greedy AR, so the diffusion loss on the
    generated part trains drafts toward exactly what verification accepts,
    under prefixes that look like decoding output (repetitions included).
    Float32 forwards, as inference.

    Parameters
    ----------
    model : Transformer
    stream : np.ndarray
        The training stream (prefixes are drawn from it).
    args : argparse.Namespace
        ``self_gen_pool`` sequences of ``seq_len`` tokens, the last
        ``self_gen_len`` generated.
    step : int
        The step (with ``args.seed``, the prefixes' offsets).

    Returns
    -------
    dict
        ``tokens`` (``[pool, seq_len]`` int64), ``start`` (first generated
        position) and ``step``.
    """
    gen = torch.Generator().manual_seed(args.seed * 7_000_003 + step + 1)
    start = args.seq_len - args.self_gen_len
    prefixes = token_windows(stream, args.self_gen_pool, start, gen)
    was_training = model.training
    model.eval()
    tokens = greedy_continuation(model, prefixes, args.self_gen_len).cpu()
    model.train(was_training)
    return {"tokens": tokens, "start": start, "step": step}


def read_init_checkpoint(args: argparse.Namespace) -> None:
    """Take the architecture (and tokenizer) of ``--init-from`` into ``args``, in place.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``train`` arguments (unchanged without ``args.init_from``).
    """
    if not args.init_from:
        return
    from ..models.checkpoint import read_config

    cfg, _ = read_config(args.init_from)
    args.vocab_size, args.hidden, args.layers = cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers
    args.heads, args.kv_heads, args.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    args.intermediate, args.seq_len, args.block_size = (cfg.intermediate_size, cfg.max_position_embeddings,
                                                        cfg.block_size)
    if args.tokenizer is None:
        args.tokenizer = args.init_from


def load_init_weights_(model: Transformer, path: str | Path) -> None:
    """Copy the weights of checkpoint ``path`` into ``model``.

    Parameters
    ----------
    model : Transformer
    path : str or Path
        A checkpoint directory of the same architecture.

    Raises
    ------
    ValueError
        If its architecture differs from the model's.
    """
    from ..models.checkpoint import load_checkpoint

    cfg, src = load_checkpoint(path, dtype=torch.float32)
    mine = {k: v for k, v in model.config.to_dict().items() if k not in ("block_size", "torch_dtype")}
    theirs = {k: v for k, v in cfg.to_dict().items() if k not in ("block_size", "torch_dtype")}
    diff = sorted(k for k in mine if mine[k] != theirs.get(k))
    if diff:
        raise ValueError(f"train --init-from: {path} has another architecture than the arguments: "
                         + ", ".join(f"{k}={theirs.get(k)} (arguments: {mine[k]})" for k in diff))
    model.load_state_dict(src.state_dict())


# ============================================================================ run
def run(args: argparse.Namespace) -> int:
    """Prepare the data, then train (or resume) a model; see the module docstring.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``graphrt train`` arguments.

    Returns
    -------
    int
        0 on success.

    Raises
    ------
    ValueError
        On inconsistent arguments, or when ``--resume`` finds a checkpoint of a
        different architecture.
    """
    torch.set_num_threads(args.threads)
    for b in [args.block_size, *(args.block_sizes or [])]:
        if b < 2 or args.seq_len < b + 2:
            raise ValueError(f"train: expected 2 <= block size < --seq-len - 1, found block size {b}, "
                             f"seq_len={args.seq_len}")
    if args.self_gen_rows and not 0 < args.self_gen_len <= args.seq_len - 2:
        raise ValueError(f"train: expected 0 < --self-gen-len <= --seq-len - 2, found {args.self_gen_len}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base_tok = None
    if args.adapter_rank:
        if not args.init_from:
            raise ValueError("train: expected --init-from BASE with --adapter-rank, found no --init-from")
        from ..models.checkpoint import read_config

        args.init_from, named_mask = drafter_mod.base_checkpoint(args.init_from)
        if args.mask_token is None:
            args.mask_token = named_mask
        if args.mask_token is None:
            raise ValueError(f"train --adapter-rank: expected --mask-token ID (a special token {args.init_from} "
                             f"never emits) for a base model that has no mask token, found none")
        base_cfg, _ = read_config(args.init_from)
        base_tok = drafter_mod.BaseTokenizer.from_dir(args.init_from, drafter_mod.drafter_config(base_cfg, args))
        args.seq_len = min(args.seq_len, base_cfg.max_position_embeddings)
    else:
        read_init_checkpoint(args)
    tok, train_stream, heldout_stream, info = prepare_data(out, args.vocab_size, args.tokenizer, base_tok)
    result = train(args, tok, train_stream, heldout_stream, info)
    if getattr(args, "json", None) is None:
        print(json.dumps(result, indent=1))
    else:
        from graphrt.frontends.cli import write_json

        write_json(args.json, result)
    return 0


def train(args: argparse.Namespace, tok: Tokenizer, train_stream: np.ndarray, heldout_stream: np.ndarray,
          info: dict[str, Any]) -> dict[str, Any]:
    """The training loop on prepared token streams.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``train`` arguments (``args.out`` is the run directory).
    tok : Tokenizer
        The tokenizer (saved with the model).
    train_stream, heldout_stream : np.ndarray
        Token streams (see :func:`prepare_data`).
    info : dict
        Corpus record (see :func:`graphrt.frontends.training.corpus.corpus_info`).

    Returns
    -------
    dict
        ``steps``, ``stop_reason``, ``model`` (the exported directory, or None
        when stopped by ``--stop-after``) and ``final`` (held-out evaluation).

    Raises
    ------
    ValueError
        When ``--resume`` finds a checkpoint of a different architecture.
    """
    from tqdm import tqdm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    init_record = None
    if args.adapter_rank:  # a drafter: the base model frozen, an adapter trained
        model, _ = drafter_mod.build_drafter(args)
        config = model.config
    else:
        config = model_config(args, tok)
        torch.manual_seed(args.seed)
        model = Transformer(config)
        init_weights_(model, args.seed)
    if args.init_from:
        if not args.adapter_rank:
            load_init_weights_(model, args.init_from)
    model.to(args.device)
    if args.init_from:
        rec = Path(args.init_from) / "training_record.json"
        init_record = json.loads(rec.read_text()) if rec.is_file() else {}
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    sched = {"decay_start": int(args.steps * (1 - args.decay_frac)), "total": args.steps}
    step, rows, elapsed = 0, [], 0.0
    pool: dict[str, Any] | None = None
    last_eval: tuple[int, dict[str, Any]] = (-1, {})
    ckpt_path = out / "ckpt.pt"
    if args.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, weights_only=False, map_location=args.device)
        saved = state["args"]
        for k in ARCH_ARGS:
            if saved.get(k) != getattr(args, k):
                raise ValueError(f"train --resume: {ckpt_path} was trained with --{k.replace('_', '-')}="
                                 f"{saved.get(k)}, found --{k.replace('_', '-')}={getattr(args, k)}")
        model.load_state_dict(state["model"], strict=not args.adapter_rank)
        opt.load_state_dict(state["optimizer"])
        step, rows, elapsed, sched = state["step"], state["rows"], state["elapsed"], state["sched"]
        pool = state.get("pool")
        _set_rng_state(state["rng"])
        print(f"train: resumed from {ckpt_path} at step {step}", file=sys.stderr)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    heldout_windows = token_windows(heldout_stream, args.eval_windows, args.seq_len)
    draft_prefixes = token_windows(heldout_stream, args.draft_prompts, args.draft_prefix_len)

    def evaluate() -> dict[str, Any]:
        h = heldout_losses(model, heldout_windows, args.block_size, args.blocks_per_seq, tok.mask_id,
                           args.full_mask_prob, args.batch_size, not args.no_autocast)
        d = measure_drafts(model, draft_prefixes, args.block_size, tok.mask_id)
        return {"heldout_ar_loss": round(h["ar"], 4), "heldout_diff_loss": round(h["diff"], 4),
                "draft_slot1_agree": d["slot_agree"][0], "draft_mean_accepted": d["mean_accepted"], "drafts": d}

    tokens_per_step = args.batch_size * args.seq_len
    bar = tqdm(total=sched["total"], initial=step, desc="train", dynamic_ncols=True,
               disable=args.no_progress)
    acc: dict[str, float] = {"loss": 0.0, "ar": 0.0, "diff": 0.0, "diff_true": 0.0}
    n_acc = 0
    t_last = time.monotonic()
    stop_reason = "steps"
    while step < sched["total"]:
        if args.minutes is not None:
            budget = args.minutes * 60
            if step < sched["decay_start"] and elapsed >= (1 - args.decay_frac) * budget:
                sched = {"decay_start": step,
                         "total": step + max(1, int(round(step * args.decay_frac / (1 - args.decay_frac))))}
                bar.total = sched["total"]
                bar.refresh()
            if elapsed >= 1.15 * budget:
                stop_reason = "time"
                break
        model.train()
        lr = lr_at(step, args.lr, args.warmup, sched["decay_start"], sched["total"])
        for g in opt.param_groups:
            g["lr"] = lr
        if args.self_gen_rows and (pool is None or step - pool["step"] >= args.self_gen_every):
            pool = self_generated_pool(model, train_stream, args, step)
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        clean = token_windows(train_stream, args.batch_size, args.seq_len, gen)
        b, nb = block_schedule(args, step)
        extra: dict[str, torch.Tensor] = {}
        if args.self_gen_rows:
            own = pool["tokens"][torch.randint(0, pool["tokens"].shape[0], (args.self_gen_rows,), generator=gen)]
            clean = torch.cat((clean, own))  # [B + R, L]
            B, R = args.batch_size, args.self_gen_rows
            extra = {"min_start": torch.cat((torch.ones(B, dtype=torch.long), torch.full((R,), pool["start"]))),
                     "ar_rows": torch.arange(B + R) < B}
        batch = build_batch(clean, b, nb, tok.mask_id, gen, args.full_mask_prob, args.seedless_prob, **extra)
        distill = args.distill if step >= args.distill_after else 0.0
        if args.adapter_rank:
            losses = drafter_mod.drafter_losses(model, batch, distill)
        else:
            losses = compute_losses(model, batch, distill, not args.no_autocast)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(decay + no_decay, args.grad_clip)
        opt.step()
        step += 1
        for k in acc:
            acc[k] += losses[k].item()
        n_acc += 1
        now = time.monotonic()
        elapsed += now - t_last
        t_last = now
        bar.update(1)
        if step % args.log_every == 0 or step == sched["total"]:
            row: dict[str, Any] = {
                "step": step, "lr": f"{lr:.3g}", "loss": round(acc["loss"] / n_acc, 4),
                "ar_loss": round(acc["ar"] / n_acc, 4), "diff_loss": round(acc["diff"] / n_acc, 4),
                "diff_true_loss": round(acc["diff_true"] / n_acc, 4), "tokens": step * tokens_per_step,
                "elapsed_s": round(elapsed, 1),
            }
            acc = {k: 0.0 for k in acc}
            n_acc = 0
            if step % args.eval_every == 0 or step == sched["total"]:
                ev = evaluate()
                last_eval = (step, dict(ev))
                ev.pop("drafts")
                row.update(ev)
                t_last = time.monotonic()  # evaluation time is not training time
            rows.append(row)
            bar.set_postfix(ar=row["ar_loss"], diff=row["diff_true_loss"], lr=row["lr"])
            write_csv(rows, out / "train_log.csv")
        if step % args.ckpt_every == 0:
            save_train_state(ckpt_path, model, opt, step, sched, rows, elapsed, args, pool)
            t_last = time.monotonic()
        if args.export_every and step % args.export_every == 0 and step < sched["total"]:
            ev = last_eval[1] if last_eval[0] == step else evaluate()
            if args.adapter_rank:
                drafter_mod.export_drafter(model, out, training_record(
                    args, info, step, "running", sched, elapsed, n_params, ev, init_record))
            else:
                export_model(model, config, tok, out, args, info, step, "running", sched, elapsed, n_params, ev,
                             init_record)
            t_last = time.monotonic()
        if args.stop_after is not None and step >= args.stop_after:
            stop_reason = "stop-after"
            break
    bar.close()
    save_train_state(ckpt_path, model, opt, step, sched, rows, elapsed, args, pool)
    write_csv(rows, out / "train_log.csv")
    if rows:
        plot_curves(rows, out / "loss_curves.png")
    if stop_reason == "stop-after":
        print(f"train: stopped after step {step} (--stop-after); resume with --resume", file=sys.stderr)
        return {"steps": step, "stop_reason": stop_reason, "model": None, "final": None}
    final = evaluate()
    for b in sorted(set(args.block_sizes or [])):
        final.setdefault("drafts_by_block", {})[str(b)] = measure_drafts(model, draft_prefixes, b, tok.mask_id)
    if args.adapter_rank:
        model_dir = drafter_mod.export_drafter(model, out, training_record(
            args, info, step, stop_reason, sched, elapsed, n_params, final, init_record))
    else:
        model_dir = export_model(model, config, tok, out, args, info, step, stop_reason, sched, elapsed, n_params,
                                 final, init_record)
    return {"steps": step, "stop_reason": stop_reason, "model": str(model_dir), "final": final}


def export_model(model: Transformer, config: ModelConfig, tok: Tokenizer, out: Path, args: argparse.Namespace,
                 info: dict[str, Any], step: int, stop_reason: str, sched: dict[str, int], elapsed: float,
                 n_params: int, final: dict[str, Any], init_record: dict[str, Any] | None) -> Path:
    """Write ``out/model``: the checkpoint, its tokenizer and ``training_record.json``.

    Parameters
    ----------
    model, config, tok :
        What is exported.
    out : Path
        The run directory.
    args : argparse.Namespace
        The run's arguments (recorded).
    info : dict
        Corpus record.
    step : int
        Steps done.
    stop_reason : str
        ``steps``, ``time``, or ``running`` for an export during the run
        (resume it with ``--resume`` and the same arguments).
    sched : dict
        The LR schedule.
    elapsed : float
        Training seconds.
    n_params : int
    final : dict
        The held-out evaluation recorded as ``final``.
    init_record : dict or None
        The ``--init-from`` checkpoint's record (kept as ``init_from_record``).

    Returns
    -------
    Path
        ``out/model``.
    """
    export_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.export_dtype]
    model_dir = out / "model"
    save_checkpoint(model, config, model_dir, dtype=export_dtype)
    save_tokenizer(tok.hf, model_dir, model_max_length=args.seq_len)
    record = training_record(args, info, step, stop_reason, sched, elapsed, n_params, final, init_record)
    (model_dir / "training_record.json").write_text(json.dumps(record, indent=2) + "\n")
    return model_dir


def training_record(args: argparse.Namespace, info: dict[str, Any], step: int, stop_reason: str,
                    sched: dict[str, int], elapsed: float, n_params: int, final: dict[str, Any],
                    init_record: dict[str, Any] | None) -> dict[str, Any]:
    """The ``training_record.json`` of a run (arguments as :func:`export_model`'s).

    Returns
    -------
    dict
    """
    record = {
        "corpus": info, "python_version": info["python_version"], "corpus_sha256": info["sha256"],
        "args": _args_dict(args), "steps": step, "stop_reason": stop_reason, "schedule": sched,
        "train_seconds": round(elapsed, 1), "tokens_seen": step * args.batch_size * args.seq_len,
        "n_params": n_params, "objective": f"L_AR + {DIFFUSION_WEIGHT} * L_diffusion",
        "final": {k: v for k, v in final.items()},
        "resume": {"checkpoint": str(Path(args.out) / "ckpt.pt"), "step": step,
                   "command": "graphrt train --resume with the arguments above"},
        "torch_version": torch.__version__,
    }
    if init_record is not None:
        record["init_from_record"] = init_record
    return record


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the ``train`` arguments on a parser.

    Parameters
    ----------
    p : argparse.ArgumentParser
    """
    a = p.add_argument
    a("--out", default="runs/train", help="run directory (checkpoint, logs, model/)")
    a("--steps", type=int, default=3000, help="optimizer steps (the schedule's length)")
    a("--minutes", type=float, default=55.0,
      help="training-time budget: the LR decay starts early enough to end near it (0 or less: none)")
    a("--seq-len", type=int, default=256, help="clean sequence length (also max_position_embeddings)")
    a("--batch-size", type=int, default=16)
    a("--block-size", type=int, default=8)
    a("--blocks-per-seq", type=int, default=8, help="diffusion blocks packed after each clean sequence")
    a("--full-mask-prob", type=float, default=0.5,
      help="probability that a block is all-masked but the seed (else the mask count is uniform in 1..b-1)")
    a("--seedless-prob", type=float, default=0.0,
      help="probability that a block masks its seed slot too (quadratic self-speculation's mask rows)")
    a("--distill", type=float, default=0.5,
      help="weight of the model's own AR argmax as the diffusion target (self-distillation)")
    a("--distill-after", type=int, default=200, help="steps before self-distillation starts")
    a("--block-sizes", type=_int_list, default=None,
      help="comma-separated block lengths cycled step by step (default: --block-size only)")
    a("--self-gen-rows", type=int, default=0,
      help="rows per batch drawn from sequences the model generated itself (diffusion loss only)")
    a("--self-gen-pool", type=int, default=64, help="self-generated sequences kept")
    a("--self-gen-len", type=int, default=128, help="generated tokens at the end of each self-generated sequence")
    a("--self-gen-every", type=int, default=500, help="steps between regenerations of the pool")
    a("--init-from", default=None,
      help="continue from this checkpoint directory (its architecture, tokenizer and weights)")
    a("--export-every", type=int, default=0, help="also export model/ at every multiple of this step (0: end only)")
    a("--adapter-rank", type=int, default=0,
      help="train a drafter: keep --init-from's weights frozen and train a LoRA of this rank and the mask "
           "token's embedding (writes OUT/drafter; 0: train every weight)")
    a("--adapter-alpha", type=float, default=None, help="LoRA alpha of the drafter (default: 2 * rank)")
    a("--adapter-modules", type=lambda t: [x for x in t.split(",") if x], default=None,
      help="comma-separated projections the drafter adapts (default: all of q,k,v,o,gate,up,down)")
    a("--mask-token", type=int, default=None,
      help="the drafter's mask token id (a special token the base model never emits)")
    a("--lr", type=float, default=2e-3)
    a("--warmup", type=int, default=100)
    a("--decay-frac", type=float, default=0.2, help="fraction of the run spent in linear LR decay")
    a("--weight-decay", type=float, default=0.1)
    a("--grad-clip", type=float, default=1.0)
    a("--seed", type=int, default=0)
    a("--resume", action="store_true", help="continue from OUT/ckpt.pt when it exists")
    a("--stop-after", type=int, default=None, help="stop (resumably) after this step without exporting")
    a("--vocab-size", type=int, default=4096)
    a("--tokenizer", default=None, help="reuse a trained tokenizer directory")
    a("--hidden", type=int, default=192)
    a("--layers", type=int, default=4)
    a("--heads", type=int, default=4)
    a("--kv-heads", type=int, default=2)
    a("--head-dim", type=int, default=48)
    a("--intermediate", type=int, default=512)
    a("--threads", type=int, default=2)
    a("--device", default="cpu", help="where to train (cpu, cuda)")
    a("--no-autocast", action="store_true", help="train in float32 (default: bfloat16 autocast)")
    a("--export-dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    a("--log-every", type=int, default=10)
    a("--eval-every", type=int, default=250)
    a("--ckpt-every", type=int, default=100)
    a("--eval-windows", type=int, default=32, help="held-out windows for the held-out losses")
    a("--draft-prompts", type=int, default=64, help="held-out prefixes for the draft-quality measurement")
    a("--draft-prefix-len", type=int, default=128)
    a("--no-progress", action="store_true", help="no progress bar")
    a("--json", default=None, metavar="FILE", help="write the training record as JSON ('-' for standard output)")


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, found {text!r}") from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``train`` subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``ArgumentParser.add_subparsers``.
    """
    p = subparsers.add_parser("train", help="train the tri-mode model on the standard library",
                              description=__doc__.splitlines()[0])
    add_arguments(p)
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    if args.minutes is not None and args.minutes <= 0:
        args.minutes = None
    return run(args)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``train`` arguments (for tests and scripts).

    Parameters
    ----------
    argv : list[str]

    Returns
    -------
    argparse.Namespace
    """
    p = argparse.ArgumentParser(prog="graphrt train")
    add_arguments(p)
    args = p.parse_args(argv)
    if args.minutes is not None and args.minutes <= 0:
        args.minutes = None
    return args


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(parse_args(sys.argv[1:])))
