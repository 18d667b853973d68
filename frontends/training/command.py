"""``graphrt train``: train the tri-mode model on the standard library's source.

Objective (docs/design.md, "The shipped model"): every step,
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
  are then exactly the greedy tokens verification accepts;
* ``--chat-rows R`` (drafters) appends ``R`` rows per batch from the base model's
  greedy answers to chat questions and code-edit requests written for training
  (:mod:`.chat_data`; generated once and cached under ``data/``), so drafts learn
  the chat template and the answers' register, not only library source.

The AR loss is the mean over the ``L - 1`` clean targets, the diffusion loss
the mean over masked slots. Weights train in float32 under bfloat16 autocast
(CPU); randomness is a pure function of ``(seed, step)``, so a run resumed from
its checkpoint reproduces the uninterrupted run's losses exactly.

Outputs under ``--out``: ``ckpt.pt`` (resume state), ``train_log.csv`` and
``loss_curves.png``, ``tokenizer/`` and ``data/`` (cached token streams), and
``model/``: the checkpoint in docs/design.md's format with the tokenizer and
``training_record.json`` (corpus hash, Python version, arguments, final
held-out losses and draft quality, resume information); with
``--export-every`` it is also written during the run (``stop_reason``
``running``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from . import drafter as drafter_mod
from .data import prepare_data
from .loop import read_init_checkpoint, train


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
    chat = None
    if args.chat_rows:
        if not args.adapter_rank:
            raise ValueError(f"train: expected --adapter-rank with --chat-rows (the answers are the base model's), "
                             f"found --chat-rows {args.chat_rows} without it")
        from .chat_data import chat_answer_stream

        stream, starts, record = chat_answer_stream(args.init_from, out, args.chat_edits, args.chat_max_new_tokens,
                                                    args.chat_batch, args.seed, not args.no_progress,
                                                    args.chat_explains)
        chat = (stream, starts)
        info = dict(info, chat_answers=record)
    result = train(args, tok, train_stream, heldout_stream, info, chat)
    if getattr(args, "json", None) is None:
        print(json.dumps(result, indent=1))
    else:
        from graphrt.frontends.cli import write_json

        write_json(args.json, result)
    return 0


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
    a("--chat-rows", type=int, default=0,
      help="drafter only: rows per batch from the base model's own chat answers (frontends/training/chat_data.py)")
    a("--chat-edits", type=int, default=96, help="code-edit requests (training-split functions) among the chats")
    a("--chat-explains", type=int, default=0,
      help="requests to explain a training-split function (prose answers about code) among the chats")
    a("--chat-max-new-tokens", type=int, default=192, help="longest chat answer generated")
    a("--chat-batch", type=int, default=16, help="chat answers generated together")
    a("--init-from", default=None,
      help="continue from this checkpoint directory (its architecture, tokenizer and weights)")
    a("--export-every", type=int, default=0, help="also export model/ at every multiple of this step (0: end only)")
    a("--adapter-rank", type=int, default=0,
      help="train a drafter: keep --init-from's weights frozen and train a LoRA of this rank and the mask "
           "token's embedding (writes OUT/drafter; 0: train every weight)")
    a("--adapter-alpha", type=float, default=None, help="LoRA alpha of the drafter (default: 2 * rank)")
    a("--adapter-modules", type=lambda t: [x for x in t.split(",") if x], default=None,
      help="comma-separated projections the drafter adapts (default: all of q,k,v,o,gate,up,down)")
    a("--init-adapter", default=None, metavar="DIR",
      help="start the drafter from this saved adapter (same rank and modules), e.g. a shipped drafter/")
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
