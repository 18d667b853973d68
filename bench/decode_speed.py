"""Decode speed of every mode on one model: tokens/s, TPF, and what compile/passes buy.

Runs each configuration over the same held-out prompts, interleaved (A, B, A, B, ...)
so that machine noise hits every configuration alike, and reports medians.

    python bench/decode_speed.py                       # the shipped model
    python bench/decode_speed.py --model DIR --prompts 8 --max-new-tokens 64 --compile

Writes a Markdown table to stdout and, with --out, to a file.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

import graphrt


def heldout_prompts(tokenizer, n: int, prompt_tokens: int) -> list[list[int]]:
    """``n`` prompts of ``prompt_tokens`` tokens cut at line boundaries from held-out stdlib files."""
    from graphrt.frontends.training.corpus import load_corpus, split_texts

    files = split_texts(load_corpus(), "heldout")
    prompts: list[list[int]] = []
    for f in files:
        lines = f.text.splitlines(keepends=True)
        for cut in range(20, len(lines), 97):
            ids = tokenizer.encode("".join(lines[:cut]))
            if len(ids) >= prompt_tokens:
                prompts.append(ids[-prompt_tokens:])
                break
        if len(prompts) == n:
            break
    return prompts


def main() -> None:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--prompt-tokens", type=int, default=96)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--modes", default="ar,diffusion,self-spec,self-spec-quadratic")
    ap.add_argument("--compile", action="store_true", help="also time the torch.compile'd backbone")
    ap.add_argument("--opt-levels", default="0,1")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    torch.manual_seed(0)
    eager = graphrt.load(args.model, dtype=args.dtype, max_batch=1)
    models = {"eager": eager}
    if args.compile:
        models["compiled"] = graphrt.load(args.model, dtype=args.dtype, max_batch=1, compile=True)
    prompts = heldout_prompts(eager.tokenizer, args.prompts, args.prompt_tokens)
    configs = [(mode, backend, int(o)) for mode in args.modes.split(",") for backend in models
               for o in args.opt_levels.split(",")]
    compiled = {c: graphrt.compile(c[0], models[c[1]], opt_level=c[2]) for c in configs}
    for c in configs:  # warm-up (torch.compile's first compile, lazy imports)
        graphrt.generate(models[c[1]], prompts[0], mode=compiled[c], max_new_tokens=8)
    rates: dict[tuple, list[float]] = {c: [] for c in configs}
    tpf: dict[tuple, list[float]] = {c: [] for c in configs}
    for p in prompts:
        for c in configs:
            t = time.perf_counter()
            r = graphrt.generate(models[c[1]], p, mode=compiled[c], max_new_tokens=args.max_new_tokens,
                                 ignore_eos=True)
            rates[c].append(len(r.tokens) / (time.perf_counter() - t))
            tpf[c].append(r.tpf)
    base = statistics.median(rates[("ar", "eager", int(args.opt_levels.split(",")[0]))]) \
        if ("ar", "eager", int(args.opt_levels.split(",")[0])) in rates else None
    lines = [f"Model: {eager.path}; {len(prompts)} held-out prompts of {args.prompt_tokens} tokens, "
             f"{args.max_new_tokens} new tokens, {args.dtype}; {platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads; medians, configurations interleaved per prompt.", "",
             "| mode | backbone | opt | TPF | tokens/s | vs AR eager O0 |", "|---|---|---|---|---|---|"]
    for c in configs:
        med = statistics.median(rates[c])
        rel = f"{med / base:.2f}x" if base else "-"
        lines.append(f"| {c[0]} | {c[1]} | O{c[2]} | {statistics.median(tpf[c]):.2f} | {med:.1f} | {rel} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(f"Command: python bench/decode_speed.py {' '.join(__import__('sys').argv[1:])}"
                                  f"\n\n{text}\n")


if __name__ == "__main__":
    main()
