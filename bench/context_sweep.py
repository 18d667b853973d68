"""Context-length sweep: ms per generated token against prompt length, graphrt AR against transformers.

A random model of the benchmarked model's shape, with more positions (4,096 by
default), batch 1, a fixed number of new tokens, prefill included in the time.
Contenders and lengths are interleaved; figures are medians over repeats.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import tempfile
from typing import Any, Callable

import torch

import graphrt
from contenders import GraphrtContender, TransformersContender, hf_mistral
from graphrt.frontends.models.checkpoint import random_checkpoint, read_config
from graphrt.frontends.models.loader import SHIPPED_MODEL, parse_dtype


def run_sweep(model_path: str | None, lengths: list[int], positions: int = 4096, new_tokens: int = 32,
              repeats: int = 3, dtype: str = "float32", compiled: bool = False,
              log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Rows ``{contender, backend, prompt_tokens, ms_per_token, runs}``, one per contender and length."""
    if max(lengths) + new_tokens > positions:
        raise ValueError(f"context sweep: the longest prompt {max(lengths)} + {new_tokens} new tokens exceeds "
                         f"--sweep-positions {positions}")
    cfg, _ = read_config(model_path or SHIPPED_MODEL)
    cfg = dataclasses.replace(cfg, max_position_embeddings=positions)
    with tempfile.TemporaryDirectory() as tmp:
        random_checkpoint(tmp, cfg, seed=0, dtype=parse_dtype(dtype) or torch.float32)
        contenders: list[Any] = [GraphrtContender(graphrt.load(tmp, dtype=dtype, max_batch=1), "ar", "eager")]
        if compiled:
            contenders.append(GraphrtContender(graphrt.load(tmp, dtype=dtype, max_batch=1, compile=True), "ar",
                                               "compiled"))
        contenders.append(TransformersContender(hf_mistral(tmp, parse_dtype(dtype) or torch.float32), fast=False))
    rng = random.Random(0)
    prompts = {n: [rng.randrange(4, cfg.vocab_size) for _ in range(n)] for n in lengths}
    for c in contenders:  # warm-up at every length (a compiled backbone meets every shape once)
        for n in lengths:
            c.run([prompts[n]], new_tokens)
    ms: dict[tuple[int, int], list[float]] = {}
    for rep in range(repeats):
        for j, n in enumerate(lengths):
            k0 = (rep + j) % len(contenders)
            for c in contenders[k0:] + contenders[:k0]:
                out = c.run([prompts[n]], new_tokens)
                ms.setdefault((id(c), n), []).append(out.seconds * 1e3 / new_tokens)
        log(f"  sweep repeat {rep + 1}/{repeats} done")
    return [{"contender": c.name, "backend": c.backend, "prompt_tokens": n,
             "ms_per_token": statistics.median(ms[(id(c), n)]), "runs": ms[(id(c), n)]}
            for c in contenders for n in lengths]


def growth(sweep: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per contender: ms per token at the longest prompt / at the shortest."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["contender"] for r in sweep):
        rows = sorted((r for r in sweep if r["contender"] == name), key=lambda r: r["prompt_tokens"])
        out[name] = {"from": rows[0]["prompt_tokens"], "to": rows[-1]["prompt_tokens"],
                     "growth": rows[-1]["ms_per_token"] / rows[0]["ms_per_token"]}
    return out


def sweep_table(sweep: list[dict[str, Any]]) -> str:
    """Markdown table: contenders by prompt length, with the growth factor."""
    lengths = sorted({r["prompt_tokens"] for r in sweep})
    g = growth(sweep)
    lines = ["| contender | " + " | ".join(f"{n} tokens" for n in lengths) + " | growth |",
             "|---|" + "---:|" * (len(lengths) + 1)]
    for name in g:
        cells = [next(r["ms_per_token"] for r in sweep if r["contender"] == name and r["prompt_tokens"] == n)
                 for n in lengths]
        lines.append(f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + f" | {g[name]['growth']:.2f}x |")
    return "\n".join(lines)
