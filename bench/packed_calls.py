"""What a packed call's layout costs on a real checkpoint, each layout against the one it replaced, side by side.

Two cases a server meets every minute:

* **rows with holes**: 13 decoding rows out of 16 (rows 3, 7 and 11 finished), one token each, over
  ``--prefix`` cached tokens per row. ``spread`` attends over views of rows 0-15 with the holes idle (what
  the backbone does now); ``gathered`` copies the 13 rows' K/V spans every layer first (what it did);
  ``contiguous`` is rows 0-12, the floor. (The gathered call passes the rows in decreasing order, which
  the backbone never spreads; a session's calls list them in increasing order.)
* **a prompt joining verification rows**: 4 rows verifying 5 tokens each (every logit wanted) packed with a
  ``--prompt``-token prompt (its last logit wanted). ``index`` runs the output head on 5 tokens per row
  (``ForwardBatch.logits == "index"``, now); ``all`` on every padded position (before).

Layouts alternate within each repetition; the figures are medians. Nothing is written to the cache, so
every repetition sees the same state.

Run: ``python bench/packed_calls.py [--model smollm2] [--prefix 300,1000] [--prompt 232] [--repeats 10]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Callable

import torch

import graphrt
from graphrt.backbone import ForwardBatch


def _batch(rows: list[int], tokens: torch.Tensor, start: torch.Tensor, logits: str = "all",
           write: bool = False) -> ForwardBatch:
    """Causal rows ``tokens [B, L]`` at positions ``start[b] ..``, nothing written unless ``write``."""
    B, L = tokens.shape
    flags = torch.ones(B, L, dtype=torch.bool)
    return ForwardBatch(rows, tokens, start[:, None] + torch.arange(L)[None],
                        torch.ones(L, L, dtype=torch.bool).tril().expand(B, L, L), "causal",
                        flags if write else ~flags, ~flags, flags, logits)


def median_ms(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median milliseconds of each call, the calls alternating within each repetition (one warm-up each)."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    for rep in range(repeats + 1):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            if rep:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main() -> None:
    """Print both tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prefix", default="300,1000", help="cached tokens per row, comma-separated")
    ap.add_argument("--prompt", type=int, default=232)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prefixes = [int(x) for x in args.prefix.split(",")]
    m = graphrt.load(args.model, max_batch=16, max_seq_len=max(prefixes + [args.prompt, 100]) + 16)
    bb = m.backbone
    rows = bb.alloc_rows(16)
    g = torch.Generator().manual_seed(0)
    vocab = bb.config.vocab_size
    print(f"{args.model}, float32, {args.threads} threads, median of {args.repeats}\n")
    print("| cached tokens per row | contiguous (13 rows) | spread (13 of 16) | gathered (13 of 16) |\n|---|---:|---:|---:|")
    holes = [r for r in rows if r not in (3, 7, 11)]
    for prefix in prefixes:
        for r in rows:
            bb.crop(r, 0)
            bb.forward(_batch([r], torch.randint(0, vocab, (1, prefix), generator=g), torch.zeros(1, dtype=torch.long),
                              write=True))
        step = torch.randint(0, vocab, (13, 1), generator=g)
        at = torch.full((13,), prefix)

        ms = median_ms({"contiguous": lambda: bb.forward(_batch(rows[:13], step, at, "last")),
                        "spread": lambda: bb.forward(_batch(holes, step, at, "last")),
                        # the same rows in decreasing order are not spread: the layout before, gathered
                        "gathered": lambda: bb.forward(_batch(holes[::-1], step.flip(0), at, "last"))},
                       args.repeats)
        print(f"| {prefix} | {ms['contiguous']:.1f} ms | {ms['spread']:.1f} ms | {ms['gathered']:.1f} ms |")
    for r in rows[:5]:
        bb.crop(r, 0)
    for r in rows[:4]:
        bb.forward(_batch([r], torch.randint(0, vocab, (1, 100), generator=g), torch.zeros(1, dtype=torch.long),
                          write=True))
    verify = [_batch([r], torch.randint(0, vocab, (1, 5), generator=g), torch.tensor([100])) for r in rows[:4]]
    prompt = _batch([rows[4]], torch.randint(0, vocab, (1, args.prompt), generator=g), torch.tensor([0]), "last")
    packed = ForwardBatch.pack(verify + [prompt])
    every = dataclasses.replace(packed, logits="all", logit_index=None)
    ms = median_ms({"index": lambda: bb.forward(packed), "all": lambda: bb.forward(every)}, args.repeats)
    print(f"\n| 4 verification rows (5 tokens) + a {args.prompt}-token prompt | ms | output head on |\n|---|---:|---:|")
    print(f"| index (now) | {ms['index']:.1f} | {5 * 5} tokens |")
    print(f"| all (before) | {ms['all']:.1f} | {5 * args.prompt} tokens |")


if __name__ == "__main__":
    main()
