"""Held-out AR loss and draft quality of a trained model directory: a release tool.

Usage::

    python -m graphrt.frontends.training.measure_drafts MODEL_DIR [MODEL_DIR ...] [--dtype float16] [--prompts 256]

For each model: held-out AR / diffusion loss on fixed held-out windows and
:func:`graphrt.frontends.training.measure.measure_drafts` (linear and quadratic
self-speculation drafts against greedy AR) on fixed held-out prefixes. With
``--dtype`` the stored weights are rounded to that dtype and computed in
float32 (the check that a half-precision export keeps quality). Prints one
JSON object per model.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from graphrt.frontends.models.checkpoint import load_checkpoint
from graphrt.frontends.models.tokenizer import Tokenizer
from graphrt.frontends.training import corpus
from graphrt.frontends.training.data import token_windows
from graphrt.frontends.training.measure import heldout_losses, measure_drafts


def heldout_stream(tok: Tokenizer) -> np.ndarray:
    """The held-out split as one ``[bos] file [eos] ...`` token stream."""
    files = corpus.split_texts(corpus.load_corpus(), "heldout")
    ids = tok.encode_batch([f.text for f in files])
    return np.concatenate([np.asarray([tok.bos_id] + x + [tok.eos_id], dtype=np.int64) for x in ids])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--prefix-len", type=int, default=96)
    p.add_argument("--windows", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for path in args.models:
        config, model = load_checkpoint(path, dtype=getattr(torch, args.dtype))
        model = model.float()
        tok = Tokenizer.from_dir(path)
        stream = heldout_stream(tok)
        L = min(256, config.max_position_embeddings)
        h = heldout_losses(model, token_windows(stream, args.windows, L), config.block_size, 4,
                           config.mask_token_id, 0.5, autocast=False)
        d = measure_drafts(model, token_windows(stream, args.prompts, args.prefix_len), config.block_size,
                           config.mask_token_id)
        print(json.dumps({"model": path, "dtype": args.dtype, "heldout_ar": round(h["ar"], 4),
                          "heldout_diff": round(h["diff"], 4), "drafts": d}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
