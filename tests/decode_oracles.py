"""Tiny random models and hand-written oracles of DESIGN.md's decoding algorithms.

The oracles recompute every forward densely (no KV cache, no graph, no session)
straight from the algorithm's description, so they share nothing with the
runtime but the transformer's ``forward_dense``.
"""

from __future__ import annotations

import torch

import graphrt
from graphrt.api import Model
from graphrt.frontends.checkpoint import init_random_
from graphrt.frontends.config import default_test_config
from graphrt.frontends.transformer import Transformer, TransformerBackbone

F64 = torch.float64


def tiny_model(seed: int = 0, dtype: torch.dtype = F64, max_batch: int = 8, **overrides) -> Model:
    """A random tiny model (vocab 96) behind a TransformerBackbone."""
    net = init_random_(Transformer(default_test_config(**overrides)), seed).to(dtype).eval()
    return Model(TransformerBackbone(net, max_rows=max_batch), None, f"random-{seed}")


def _dense(net: Transformer, seq: list[int], block_from: int | None = None) -> torch.Tensor:
    """Logits ``[L, V]`` over ``seq``: causal, except rows >= block_from see the whole block (and prefix).

    The mask token's logit is -inf: no mode ever predicts it.
    """
    L = len(seq)
    mask = torch.ones(L, L, dtype=torch.bool).tril()
    if block_from is not None:
        mask[block_from:, block_from:] = True
    with torch.no_grad():
        logits = net.forward_dense(torch.tensor([seq]), torch.arange(L)[None], mask[None])[0]
    logits[:, net.config.mask_token_id] = float("-inf")
    return logits


def _argmax(row: torch.Tensor) -> int:
    best = max(row.tolist())
    return row.tolist().index(best)


def greedy_oracle(model: Model, prompt: list[int], n: int) -> list[int]:
    """Plain greedy AR: recompute the whole sequence for every token."""
    net = model.backbone.model
    seq = list(prompt)
    for _ in range(n):
        seq.append(_argmax(_dense(net, seq)[-1]))
    return seq[len(prompt):]


def diffusion_oracle(model: Model, prompt: list[int], n: int, b: int, threshold: float | None,
                     steps: int | None = None, stop_at_eos: bool = True) -> tuple[list[int], int]:
    """DESIGN.md's block diffusion at T = 0; returns (tokens cut at EOS/budget, forwards)."""
    net, cfg = model.backbone.model, model.config
    mask_id, eos = cfg.mask_token_id, cfg.eos_token_id
    steps = steps or b
    seq = list(prompt)
    seed = _argmax(_dense(net, seq)[-1])
    forwards, out = 1, []
    while len(out) < n:
        block = [seed] + [mask_id] * (b - 1)
        step = 0

        def unresolved() -> bool:
            for tok in block:
                if tok == eos:
                    return False
                if tok == mask_id:
                    return True
            return False

        while unresolved():
            logits = _dense(net, seq + block, block_from=len(seq))[len(seq):]
            forwards += 1
            masked = [i for i, t in enumerate(block) if t == mask_id]
            cand = {i: _argmax(logits[i]) for i in masked}
            conf = {i: torch.softmax(logits[i], -1)[cand[i]].item() for i in masked}
            ranked = sorted(masked, key=lambda i: (-conf[i], i))  # most confident, lowest position first
            if threshold is None:
                base, rem = divmod(b - 1, steps)
                chosen = ranked[: base + (1 if step < rem else 0)]
            else:
                chosen = [ranked[0]] + [i for i in ranked[1:] if conf[i] >= threshold]
            for i in chosen:
                block[i] = cand[i]
            step += 1
        block = [eos if t == mask_id else t for t in block]
        logits = _dense(net, seq + block)
        forwards += 1
        seed = _argmax(logits[-1])
        seq += block
        out += block
        if stop_at_eos and eos in out:
            out = out[: out.index(eos) + 1]
            break
    return out[:n], forwards


def self_spec_forwards(emit_sizes: list[int], draft_forwards_per_cycle: int = 1) -> int:
    """DESIGN.md's forward count of linear self-speculation: prefill + (draft + verify) per cycle."""
    cycles = len(emit_sizes) - 1  # the first emit is the prefill's token
    return 1 + cycles * (draft_forwards_per_cycle + 1)


def run(model: Model, prompt: list[int], mode: str, opt_level: int = 1, block_length: int | None = None,
        threshold: float | None = None, **params) -> graphrt.GenerationResult:
    """``graphrt.generate`` with the compiled policy of ``mode``."""
    return graphrt.generate(model, prompt, mode=mode, block_length=block_length, threshold=threshold,
                            opt_level=opt_level, **params)
