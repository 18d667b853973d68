"""Measuring a model in training: its drafts against its greedy continuation, its held-out losses.

:func:`measure_drafts` drafts a block from masks after each prefix (attention rows from
:func:`draft_mask`) and compares it with the model's own greedy continuation
(:func:`greedy_continuation`), which is what verification accepts; :func:`heldout_losses` is the
objective (:mod:`.objective`) on held-out windows.
"""

from __future__ import annotations

from typing import Any

import torch

from .objective import block_training_mask, build_batch, compute_losses
from ..models.transformer import Transformer


@torch.no_grad()
def greedy_continuation(model: Transformer, prefixes: torch.Tensor, n: int, autocast: bool = False) -> torch.Tensor:
    """The model's greedy AR continuation of each prefix (causal prefill, then one cached token per forward).

    Runs through the backbone protocol (:class:`~graphrt.frontends.models.transformer.TransformerBackbone`
    and its KV cache), as decoding does.

    Parameters
    ----------
    model : Transformer
    prefixes : torch.Tensor
        ``[N, P]`` int64.
    n : int
        Tokens to generate.
    autocast : bool
        Run under bfloat16 autocast.

    Returns
    -------
    torch.Tensor
        ``[N, P + n]``: the prefixes followed by their greedy continuations.
    """
    from graphrt.backbone import ForwardBatch

    from ..models.transformer import TransformerBackbone

    N, P = prefixes.shape
    dev = model.encoder.embed_tokens.weight.device
    prefixes = prefixes.to(dev)
    backbone = TransformerBackbone(model, max_rows=N, row_capacity=P + n)
    rows = backbone.alloc_rows(N)

    def call(tokens: torch.Tensor, start: int) -> torch.Tensor:
        L = tokens.shape[1]
        ones = torch.ones(N, L, dtype=torch.bool)
        batch = ForwardBatch(rows, tokens, (start + torch.arange(L)).expand(N, L),
                             torch.ones(L, L, dtype=torch.bool).tril().expand(N, L, L), "causal", ones,
                             torch.zeros(N, L, dtype=torch.bool), ones)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            return backbone.forward(batch)[:, -1].float().argmax(-1, keepdim=True).to(dev)  # [N, 1]

    out = [prefixes, call(prefixes, 0)]
    for i in range(n - 1):
        out.append(call(out[-1], P + i))
    return torch.cat(out, dim=1)[:, :P + n]


def draft_mask(prefix_len: int, block_size: int, batch: int) -> torch.Tensor:
    """Mask of a draft forward: causal prefix, then a block over prefix + block.

    Parameters
    ----------
    prefix_len, block_size, batch : int

    Returns
    -------
    torch.Tensor
        ``[batch, P + b, P + b]`` bool.
    """
    P, b = prefix_len, block_size
    starts = torch.full((batch, 1), P, dtype=torch.long)
    return block_training_mask(P, starts, b)


def _agreement(drafts: torch.Tensor, greedy: torch.Tensor) -> dict[str, Any]:
    """Per-slot agreement and accepted-prefix statistics of drafts ``[N, k]`` against greedy ``[N, k]``."""
    agree = drafts == greedy  # [N, k]
    accepted = agree.long().cumprod(dim=1).sum(dim=1)  # [N]
    mean_k = accepted.float().mean().item()
    return {
        "slot_agree": [round(x, 4) for x in agree.float().mean(0).tolist()],
        "accept_hist": torch.bincount(accepted, minlength=drafts.shape[1] + 1).tolist(),
        "mean_accepted": round(mean_k, 4),
    }


@torch.no_grad()
def measure_drafts(model: Transformer, prefixes: torch.Tensor, block_size: int, mask_token_id: int,
                   autocast: bool = False) -> dict[str, Any]:
    """Draft quality as self-speculation sees it, against greedy AR decoding.

    For each prefix: greedy AR continuation ``g_0 .. g_b`` (``g_0`` is the
    seed, the AR token after the prefix).

    * Linear: one diffusion forward over ``[g_0, MASK x (b-1)]`` after the
      prefix gives drafts ``d_1 .. d_{b-1}`` (argmax per slot); verification
      accepts the longest run with ``d_j == g_j``. One draft and one verify
      forward per cycle, so TPF is about ``(E[k] + 1) / 2``.
    * Quadratic (TiDAR row): ``b`` masks after the causal prefix + ``g_0``
      (masks see the prefix, ``g_0`` and each other); the next block is the
      bonus ``g_1`` followed by the mask predictions ``m_2 .. m_b``, accepted
      while ``m_j == g_j``. One forward per cycle: TPF about ``E[k] + 1``.

    Parameters
    ----------
    model : Transformer
        The model (it has no dropout: no eval mode needed).
    prefixes : torch.Tensor
        ``[N, P]`` int64 prefixes.
    block_size : int
        ``b``.
    mask_token_id : int
        The mask token.
    autocast : bool
        Run under bfloat16 autocast.

    Returns
    -------
    dict
        ``slot_agree`` (``b - 1`` rates ``P(d_j == g_j)``), ``accept_hist``
        (counts of ``k = 0..b-1`` accepted drafts), ``mean_accepted``
        (``E[k]``), ``linear_tpf_estimate`` and ``quadratic`` (the same
        statistics for the quadratic drafts, with ``tpf_estimate``).
    """
    N, P = prefixes.shape
    b = block_size
    dev = model.encoder.embed_tokens.weight.device
    prefixes = prefixes.to(dev)
    greedy = greedy_continuation(model, prefixes, b + 1, autocast)[:, P:]  # [N, b+1]: g_0 .. g_b
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
        masks = torch.full((N, b), mask_token_id, device=dev)
        block = torch.cat((greedy[:, :1], masks[:, 1:]), dim=1)  # [N, b]: [g_0, MASK x (b-1)]
        ltokens = torch.cat((prefixes, block), dim=1)  # [N, P+b]
        lin = model.forward_dense(ltokens, torch.arange(P + b, device=dev).expand(N, P + b),
                                  draft_mask(P, b, N).to(dev), ltokens == mask_token_id)  # [N, P+b, V]
        qtokens = torch.cat((prefixes, greedy[:, :1], masks), dim=1)  # [N, P+1+b]
        quad = model.forward_dense(qtokens, torch.arange(P + 1 + b, device=dev).expand(N, P + 1 + b),
                                   draft_mask(P + 1, b, N).to(dev), qtokens == mask_token_id)  # [N, P+1+b, V]
    linear = _agreement(lin[:, P + 1:].float().argmax(-1), greedy[:, 1:b])
    quadratic = _agreement(quad[:, P + 2:].float().argmax(-1), greedy[:, 2:b + 1])
    quadratic["tpf_estimate"] = round(quadratic["mean_accepted"] + 1, 4)
    return dict(linear, linear_tpf_estimate=round((linear["mean_accepted"] + 1) / 2, 4),
                quadratic=quadratic, n_prefixes=N)


@torch.no_grad()
def heldout_losses(model: Transformer, windows: torch.Tensor, block_size: int, blocks_per_seq: int,
                   mask_token_id: int, full_mask_prob: float, batch_size: int = 16,
                   autocast: bool = True) -> dict[str, float]:
    """AR and diffusion loss on fixed held-out windows (fixed masks, seed 0).

    Parameters
    ----------
    model : Transformer
    windows : torch.Tensor
        ``[N, L]`` from :func:`token_windows` (evenly spaced).
    block_size, blocks_per_seq, mask_token_id : int
        As in training.
    full_mask_prob : float
        As in training.
    batch_size : int
        Windows per forward.
    autocast : bool
        Run under bfloat16 autocast.

    Returns
    -------
    dict[str, float]
        ``ar`` and ``diff`` (true targets), averaged over batches.
    """
    gen = torch.Generator().manual_seed(0)
    ar, diff, n = 0.0, 0.0, 0
    for i in range(0, windows.shape[0], batch_size):
        batch = build_batch(windows[i:i + batch_size], block_size, blocks_per_seq, mask_token_id, gen,
                            full_mask_prob)
        out = compute_losses(model, batch, 0.0, autocast)
        ar += out["ar"].item()
        diff += out["diff_true"].item()
        n += 1
    return {"ar": ar / n, "diff": diff / n}
