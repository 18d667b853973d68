"""What attention costs inside real decode forwards: rows x tokens over a cached prefix, the forward and the time
spent in :func:`~graphrt.frontends.models.fused_glue._attention`, side by side in one run.

Each of ``--rows`` rows gets a ``--prefix``-token cached prefix (random tokens, written once); then each shape
``B x L`` (``B`` rows of ``L`` causal tokens, nothing written, so every repetition sees the same cache) is timed
as a whole forward, with the attention kernel's calls timed inside it (a wrapper around the module's
``_attention``; its 30 calls cost a few microseconds of timing). The floor is what attention must read: the
rows' cached K and V, once per layer, at the machine's streaming-read rate (timed in the same run). Shapes are
interleaved within each repetition; figures are medians.

The shapes are a server's: 1-16 streams decoding one token each, one stream verifying 8 or 16 drafted tokens,
4 streams verifying 8 each.

Run: ``python bench/decode_attention.py [--model smollm2] [--prefix 400] [--repeats 9] [--out FILE.md]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import graphrt
import graphrt.frontends.models.fused_glue as glue
from graphrt.backbone import ForwardBatch

SHAPES = ((1, 1), (1, 8), (1, 16), (4, 1), (8, 1), (16, 1), (4, 8))


def _call(rows: list[int], tokens: torch.Tensor, start: int, write: bool) -> ForwardBatch:
    """Causal rows ``tokens [B, L]`` at positions ``start ..``, the last logit of each row wanted."""
    B, L = tokens.shape
    flags = torch.ones(B, L, dtype=torch.bool)
    return ForwardBatch(rows, tokens, start + torch.arange(L).expand(B, L),
                        torch.ones(L, L, dtype=torch.bool).tril().expand(B, L, L), "causal",
                        flags if write else ~flags, ~flags, flags, "last")


def stream_gbps() -> float:
    """GB/s of a sum over a 512 MB float32 tensor (median of 5)."""
    x = torch.ones(128 << 20)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t0)
    return x.numel() * 4 / statistics.median(times) / 1e9


def main(argv: list[str] | None = None) -> int:
    """Print the table (and write it to ``--out``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prefix", type=int, default=400, help="cached tokens per row")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows_needed = max(b for b, _ in SHAPES)
    model = graphrt.load(args.model, max_batch=rows_needed, max_seq_len=args.prefix + 32)
    backbone, cfg = model.backbone, model.backbone.model.config
    spent = [0.0]
    kernel = glue._attention

    def timed(*a: object) -> None:
        t0 = time.perf_counter()
        kernel(*a)
        spent[0] += time.perf_counter() - t0

    glue._attention = timed
    rows = backbone.alloc_rows(rows_needed)
    gen = torch.Generator().manual_seed(0)
    for r in rows:
        backbone.forward(_call([r], torch.randint(0, cfg.vocab_size, (1, args.prefix), generator=gen), 0, True))
    steps = {s: torch.randint(0, cfg.vocab_size, s, generator=gen) for s in SHAPES}
    forward: dict[tuple[int, int], list[float]] = {s: [] for s in SHAPES}
    attention: dict[tuple[int, int], list[float]] = {s: [] for s in SHAPES}
    gbps = []
    for rep in range(args.repeats + 1):  # the first repetition warms up
        for B, L in SHAPES:
            spent[0] = 0.0
            t0 = time.perf_counter()
            backbone.forward(_call(rows[:B], steps[(B, L)], args.prefix, False))
            if rep:
                forward[(B, L)].append(time.perf_counter() - t0)
                attention[(B, L)].append(spent[0])
        gbps.append(stream_gbps())
    rate = statistics.median(gbps)
    kv_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 4 * args.prefix  # per row
    lines = [f"{args.model}, float32, {args.threads} threads, {args.prefix} cached tokens per row, median of "
             f"{args.repeats}; streaming reads {rate:.1f} GB/s\n",
             "| rows x tokens | forward, ms | attention, ms | attention's share | K/V read floor, ms |",
             "|---|---:|---:|---:|---:|"]
    for B, L in SHAPES:
        f, a = statistics.median(forward[(B, L)]) * 1e3, statistics.median(attention[(B, L)]) * 1e3
        lines.append(f"| {B} x {L} | {f:.1f} | {a:.1f} | {a / f:.0%} | {B * kv_bytes / rate / 1e6:.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(table + "\n\nCommand: `python bench/decode_attention.py " + " ".join(sys.argv[1:]) + "`\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
