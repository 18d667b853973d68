"""What the drafter adapter adds to a forward: the same cached call with the adapter on every token and on none.

Loads a model with its drafter (default SmolLM2's shipped one), writes a ``--prefix``-token prompt into one row,
then times forwards of each width over it, adapter on and off interleaved, nothing written (so the prefix stays
the same). Medians of ``--repeats``.

Run: ``python bench/adapter_cost.py [--model smollm2] [--widths 1 4 8] [--repeats 15]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import graphrt
from graphrt.backbone import ForwardBatch


def main() -> None:
    """Print the forward time by width with the adapter off and on."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--widths", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--prefix", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = graphrt.load(args.model, max_batch=1, max_seq_len=args.prefix + max(args.widths) + 64)
    bb = model.backbone
    (row,) = bb.alloc_rows(1)
    ids = torch.randint(0, 1000, (1, args.prefix + max(args.widths)), generator=torch.Generator().manual_seed(0))

    def call(start: int, width: int, write: bool, adapter: bool) -> None:
        bb.forward(ForwardBatch(rows=[row], tokens=ids[:, start:start + width],
                                positions=torch.arange(start, start + width)[None],
                                attention=torch.ones(width, width, dtype=torch.bool).tril()[None], kind="causal",
                                kv_write=torch.full((1, width), write), adapter=torch.full((1, width), adapter),
                                valid=torch.ones(1, width, dtype=torch.bool)))

    call(0, args.prefix, True, False)
    print(f"{args.model}: forward over a {args.prefix}-token prefix, ms, median of {args.repeats}")
    for width in args.widths:
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for adapter in (False, True):
                t0 = time.perf_counter()
                call(args.prefix, width, False, adapter)
                times[adapter].append(time.perf_counter() - t0)
        off, on = (statistics.median(times[a]) * 1e3 for a in (False, True))
        print(f"width {width}: adapter off {off:.1f}, on {on:.1f} (+{on - off:.1f})")


if __name__ == "__main__":
    main()
