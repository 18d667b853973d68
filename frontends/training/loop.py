"""The training loop of ``graphrt train``: :func:`train` and what it keeps.

The model built from the run's arguments and its initial weights, the learning-rate schedule
(:func:`lr_at`), the block-length schedule and the self-generated pool of continued training, the
log (``train_log.csv``, ``loss_curves.png``), the resume state (``ckpt.pt``: randomness is a pure
function of ``(seed, step)``, so a resumed run reproduces the uninterrupted one) and the exported
``model/`` with its ``training_record.json``. The objective is :mod:`.objective`, the data
:mod:`.data`, the measurements :mod:`.measure`, the command :mod:`.command`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import drafter as drafter_mod
from .chat_data import conversation_windows
from .data import token_windows
from .measure import greedy_continuation, heldout_losses, measure_drafts
from .objective import DIFFUSION_WEIGHT, build_batch, compute_losses
from ..models.checkpoint import save_checkpoint
from ..models.config import ModelConfig
from ..models.tokenizer import Tokenizer, save_tokenizer
from ..models.transformer import Transformer

CSV_FIELDS = (
    "step", "lr", "loss", "ar_loss", "diff_loss", "diff_true_loss", "tokens", "elapsed_s",
    "heldout_ar_loss", "heldout_diff_loss", "draft_slot1_agree", "draft_mean_accepted", "draft_slot_agree",
)
ARCH_ARGS = ("vocab_size", "hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate",
             "seq_len", "block_size")


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
        slots = [[float(x) for x in str(r.get("draft_slot_agree") or r["draft_slot1_agree"]).split()] for r in ev]
        for j in range(max(len(a) for a in slots)):  # evaluations logged before per-slot rates give slot 1 only
            pts = [(r["step"], a[j]) for r, a in zip(ev, slots) if len(a) > j]
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], "s-", ms=3, lw=1,
                     label=f"slot-{j + 1} agreement with AR")
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


def train(args: argparse.Namespace, tok: Tokenizer, train_stream: np.ndarray, heldout_stream: np.ndarray,
          info: dict[str, Any], chat: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
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
    chat : (stream, starts), optional
        The base model's chat answers and each conversation's offset
        (:func:`~graphrt.frontends.training.chat_data.chat_answer_stream`); ``args.chat_rows``
        rows of every batch come from them.

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
                "draft_slot1_agree": d["slot_agree"][0], "draft_mean_accepted": d["mean_accepted"],
                "draft_slot_agree": " ".join(f"{x:.4f}" for x in d["slot_agree"]), "drafts": d}

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
        if chat is not None:
            clean = torch.cat((clean, conversation_windows(*chat, args.chat_rows, args.seq_len, gen)))
        b, nb = block_schedule(args, step)
        extra: dict[str, torch.Tensor] = {}
        if args.self_gen_rows:
            own = pool["tokens"][torch.randint(0, pool["tokens"].shape[0], (args.self_gen_rows,), generator=gen)]
            clean = torch.cat((clean, own))  # [B + R, L]
            R = args.self_gen_rows
            B = clean.shape[0] - R
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
