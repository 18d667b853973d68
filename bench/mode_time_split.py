"""Where a mode's time goes at batch 1: backbone calls by width and adapter, backbone seconds, the rest.

Each mode decodes the same prompts greedily; the backbone's ``forward`` is timed around
every call, so a mode's wall time splits into the backbone's share (per call: how many
tokens wide, whether the draft adapter ran) and everything else (the policy's graph on
the host: sampling, verification, lookups, choices). Modes are interleaved per prompt.

Run: ``python bench/mode_time_split.py --model smollm2 [--modes ar,self-spec,...] [--tokens 64]
[--out bench/results/mode_time_split_smollm2.md]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

import graphrt

PROMPTS = Path(__file__).resolve().parent / "prompts"


class TimedBackbone:
    """Wraps ``backbone.forward``: per call its width, whether the adapter ran and its seconds."""

    def __init__(self, backbone: object) -> None:
        self.backbone, self.inner = backbone, backbone.forward
        self.calls: list[tuple[int, bool, float]] = []
        backbone.forward = self  # type: ignore[attr-defined]

    def __call__(self, batch: object) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.inner(batch)
        self.calls.append((int(batch.tokens.shape[1]), bool(batch.adapter.any()), time.perf_counter() - t0))
        return out


def split(model: graphrt.Model, timed: TimedBackbone, messages: list[dict], mode: str, tokens: int) -> dict:
    """One greedy decode of ``messages`` in ``mode``: wall, backbone and host seconds, and the calls."""
    timed.calls.clear()
    t0 = time.perf_counter()
    out = graphrt.chat(model, messages, mode=mode, max_new_tokens=tokens, ignore_eos=True)
    wall = time.perf_counter() - t0
    decode = timed.calls[1:]  # the first call is the prefill
    by_kind: dict[str, list[float]] = defaultdict(list)
    for width, adapter, seconds in decode:
        by_kind[f"{width}{'+adapter' if adapter else ''}"].append(seconds)
    backbone = sum(s for _, _, s in timed.calls)
    return {"tokens": len(out.tokens), "wall": wall, "backbone": backbone, "host": wall - backbone,
            "prefill": timed.calls[0][2], "calls": len(decode),
            "ms_by_call": {k: (len(v), 1e3 * statistics.median(v)) for k, v in sorted(by_kind.items())}}


def main(argv: list[str] | None = None) -> int:
    """Measure and print (and with ``--out`` write) the split per mode and prompt kind."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--modes", default="ar,prompt-lookup,self-spec,self-spec-quadratic,self-spec-lookup,auto")
    p.add_argument("--kinds", default="chat,code_edit")
    p.add_argument("--prompts", type=int, default=2, help="prompts per kind")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="a markdown file for the table (and its .json beside it)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = graphrt.load(args.model, max_batch=1)
    timed = TimedBackbone(model.backbone)
    modes = [m for m in args.modes.split(",") if m]
    rows: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for kind in args.kinds.split(","):
        lines = (PROMPTS / f"{kind}.jsonl").read_text().splitlines()[:args.prompts]
        for line in lines:
            messages = json.loads(line)["messages"]
            for mode in modes:
                split(model, timed, messages, mode, 4)  # warm: compiled policy, allocator
            for mode in modes:
                rows[(kind, mode)].append(split(model, timed, messages, mode, args.tokens))
    out = [f"# Where each mode's time goes (`{args.model}`, batch 1, {args.tokens} tokens, greedy, "
           f"{args.threads} threads, {args.prompts} prompts per kind)", "",
           "| kind | mode | tok/s | per token: wall / backbone / host ms | decode calls per token | "
           "median ms per call by width (count) |", "|---|---|---:|---|---:|---|"]
    for (kind, mode), rs in rows.items():
        n = sum(r["tokens"] for r in rs)
        wall, bb = sum(r["wall"] for r in rs), sum(r["backbone"] for r in rs)
        calls: dict[str, list] = defaultdict(list)
        for r in rs:
            for k, (c, ms) in r["ms_by_call"].items():
                calls[k].append((c, ms))
        desc = ", ".join(f"{k}: {statistics.median(ms for _, ms in v):.1f} ({sum(c for c, _ in v)})"
                         for k, v in sorted(calls.items(), key=lambda kv: int(kv[0].split("+")[0])))
        out.append(f"| {kind} | {mode} | {n / wall:.1f} | {1e3 * wall / n:.1f} / {1e3 * bb / n:.1f} / "
                   f"{1e3 * (wall - bb) / n:.1f} | {sum(r['calls'] for r in rs) / n:.2f} | {desc} |")
    text = "\n".join(out) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            {f"{k}|{m}": v for (k, m), v in rows.items()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
