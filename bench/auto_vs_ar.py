"""Mode auto against AR on SmolLM2 with its drafter, one request at a time (a quick check, not the sweep).

Run: ``python bench/auto_vs_ar.py [--prompts 2] [--kinds chat,code_edit]``. For each
prompt of ``bench/prompts/<kind>.jsonl``, AR and auto are interleaved twice; the second (warm) run of each is
reported as tokens/s (prefill included), auto's TPF, and whether the tokens agree.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import graphrt

PROMPTS = Path(__file__).resolve().parent / "prompts"


def main() -> None:
    """Print one line per prompt: AR and auto tokens/s, auto's TPF, the ratio, identity."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--prompts", type=int, default=2, help="prompts per kind")
    p.add_argument("--kinds", default="chat,code_edit")
    p.add_argument("--max-new-tokens", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(2)
    model = graphrt.load(args.model, max_batch=1, max_seq_len=1024)
    for kind in args.kinds.split(","):
        rows = [json.loads(line) for line in (PROMPTS / f"{kind}.jsonl").read_text().splitlines()[:args.prompts]]
        for row in rows:
            runs: dict[str, list[tuple[float, float, list[int]]]] = {}
            for mode in ("ar", "auto", "ar", "auto"):
                t = time.perf_counter()
                out = graphrt.chat(model, row["messages"], mode=mode, max_new_tokens=args.max_new_tokens,
                                   ignore_eos=True)
                runs.setdefault(mode, []).append((len(out.tokens) / (time.perf_counter() - t), out.tpf, out.tokens))
            ar, auto = runs["ar"][1], runs["auto"][1]
            print(f"{row['id']}: ar {ar[0]:.1f} tok/s, auto {auto[0]:.1f} tok/s (TPF {auto[1]:.2f}) = "
                  f"{auto[0] / ar[0]:.2f}x, identical to ar: {ar[2] == auto[2]}")


if __name__ == "__main__":
    main()
