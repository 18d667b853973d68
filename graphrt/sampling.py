"""Reference semantics of sampling and of the fused decode ops.

These torch functions *define* what the fused ops ``sample``, ``confidence``,
``denoise_select`` and ``verify_accept`` mean: each is registered as its op's
one reference (with the registry's calling convention), and the fusion passes,
the out-variants and the CUDA kernels' batched references use it. Shapes are per
request (no batch dimension) unless a leading ``...`` is shown.

Conventions (``docs/design.md``):

* ties in ``argmax`` go to the lowest index; among equally confident positions
  the lowest position wins;
* NaN logits are treated as ``-inf``; a row that is entirely ``-inf`` samples
  token 0 (the lowest index), so no kernel ever reads or writes out of bounds;
* at ``T > 0`` a token is the Gumbel-max ``argmax(filtered(logits / T) + g)``
  with ``g`` from :mod:`graphrt.noise` keyed by the token's absolute position.
"""

from __future__ import annotations

import torch

from graphrt import noise

NEG_INF = float("-inf")
TEMPERATURE_FLOOR = 1e-30
"""Sampling divides logits by ``max(T, TEMPERATURE_FLOOR)``, so a tiny T > 0 stays finite."""


def clean_logits(logits: torch.Tensor) -> torch.Tensor:
    """float64 copy of ``logits [..., V]`` with NaN replaced by ``-inf`` (infinities kept as they are)."""
    return torch.nan_to_num(logits.to(torch.float64), nan=NEG_INF, posinf=float("inf"), neginf=NEG_INF)


def argmax_lowest(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``argmax`` over the last dim that returns the lowest index among ties.

    NaN counts as ``-inf``; an all ``-inf`` row gives 0. ``torch.argmax`` and
    ``torch.max(dim)`` both return the first maximal index (documented), so this is
    one pass over the row in its own dtype; no float64 copy is needed for a
    comparison. Several rows go through ``torch.max``, which reduces them about twice
    as fast on CPU. ``out`` (int64, the result's shape) receives the result when given.
    """
    x = torch.nan_to_num(x, nan=NEG_INF, posinf=float("inf"), neginf=NEG_INF)
    if x.dim() < 2:
        return torch.argmax(x, dim=-1, out=out)
    first = torch.max(x, dim=-1).indices
    return first if out is None else out.copy_(first)


def top_k_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask ``[..., V]`` of the ``k`` largest entries (ties: lowest index)."""
    v = x.shape[-1]
    if k <= 0 or k >= v:
        return torch.ones_like(x, dtype=torch.bool)
    # Stable descending sort keeps lower indices first among equal values.
    order = torch.sort(x, dim=-1, descending=True, stable=True).indices
    mask = torch.zeros_like(x, dtype=torch.bool)
    return mask.scatter(-1, order[..., :k], True)


def top_p_mask(x: torch.Tensor, top_p: float) -> torch.Tensor:
    """Boolean nucleus mask ``[..., V]`` over ``softmax(x)``.

    Keeps the smallest prefix of the tokens sorted by probability (ties: lowest
    index) whose mass reaches ``top_p``; the most probable token is always kept.
    ``top_p >= 1`` keeps everything.

    The rule is evaluated on the unnormalised weights ``w = exp(x - max x)``
    with ``W = sum(w)``: the token of rank ``r`` in its tie class (entries of
    equal ``x``, each of weight ``w_c``) is kept iff
    ``r * w_c < top_p * W - A``, where ``A`` is the cumulative weight of the
    classes above it. Within a tie class nothing is summed, so the cut does not
    depend on an order of summation: ``m`` equal entries keep the
    ``ceil(top_p * m)`` lowest indices (the product rounded once to float64),
    and the kernel (``graphrt.cuda_kernels.sample``) makes the same comparisons.
    A row without finite weight (all ``-inf``, or a ``+inf``) keeps its first
    sorted entry only.
    """
    if top_p >= 1.0:
        return torch.ones_like(x, dtype=torch.bool)
    order = torch.sort(x, dim=-1, descending=True, stable=True).indices
    xs = x.to(torch.float64).gather(-1, order)
    w = torch.exp(xs - xs[..., :1]).nan_to_num(0.0)
    room = top_p * w.sum(-1, keepdim=True)
    before = torch.cumsum(torch.cat([torch.zeros_like(w[..., :1]), w[..., :-1]], dim=-1), dim=-1)  # exclusive
    slot = torch.arange(xs.shape[-1], device=x.device).expand(xs.shape)
    new_class = torch.cat([torch.ones_like(xs[..., :1], dtype=torch.bool), xs[..., 1:] != xs[..., :-1]], dim=-1)
    start = torch.where(new_class, slot, 0).cummax(-1).values  # the first slot of each entry's tie class
    keep_sorted = (slot - start) * w.gather(-1, start) < room - before.gather(-1, start)
    keep_sorted[..., 0] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then top-p filtering, float64 ``[..., V]``; filtered entries are ``-inf``."""
    x = clean_logits(logits) / temperature
    if 0 < top_k < x.shape[-1]:  # else the mask keeps everything
        x = torch.where(top_k_mask(x, top_k), x, torch.full_like(x, NEG_INF))
    if not top_p >= 1.0:  # (a NaN top_p filters, as top_p_mask does)
        x = torch.where(top_p_mask(x, top_p), x, torch.full_like(x, NEG_INF))
    return x


def sample(
    logits: torch.Tensor,
    positions: torch.Tensor,
    seed: int | torch.Tensor,
    stream: int | torch.Tensor,
    temperature: float | torch.Tensor,
    top_k: int | torch.Tensor = 0,
    top_p: float | torch.Tensor = 1.0,
    *,
    purpose: int = noise.SAMPLE,
) -> torch.Tensor:
    """Token ids ``[...]`` drawn from ``logits [..., V]``: the ``sample`` op's reference.

    ``temperature == 0`` (or NaN) is greedy (:func:`argmax_lowest`); otherwise
    Gumbel-max over :func:`filter_logits` at ``max(temperature,``
    :data:`TEMPERATURE_FLOOR` ``)`` with noise keyed by ``(seed, stream)``,
    ``positions [...]`` (the absolute position each sampled token will occupy)
    and ``purpose``. This is bit for bit the primitive chain of
    :func:`graphrt.library.sample_tokens`, which the fusion pass replaces.

    Parameters
    ----------
    logits:
        ``[..., V]`` scores.
    positions:
        ``[...]`` absolute positions of the tokens drawn.
    seed, stream:
        The request's noise key (Python ints or rank-0 tensors, as the op passes them).
    temperature, top_k, top_p:
        Sampling parameters (Python numbers or rank-0 tensors).
    purpose:
        The noise purpose (an op attribute).

    Returns
    -------
    torch.Tensor
        ``[...]`` int64 token ids.
    """
    temperature = float(temperature)
    if not temperature > 0:
        return argmax_lowest(logits)
    scores = filter_logits(logits, max(temperature, TEMPERATURE_FLOOR), int(top_k), float(top_p))
    scores = scores + noise.gumbel(int(seed), int(stream), positions, purpose, logits.shape[-1])
    return argmax_lowest(scores)


def confidence(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Softmax probability (temperature 1, no noise) of ``tokens [...]`` under ``logits [..., V]``."""
    probs = torch.softmax(clean_logits(logits), dim=-1)
    return probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).nan_to_num(0.0)


def denoise_select(
    block: torch.Tensor,
    candidates: torch.Tensor,
    conf: torch.Tensor,
    count: int | torch.Tensor | None = None,
    *,
    mask_token_id: int,
    threshold: float | None,
) -> torch.Tensor:
    """Commit candidates into the masked slots of ``block [L]``; returns the new block.

    Among masked slots: with a ``threshold``, the most confident slot (lowest
    position on ties) plus every slot whose confidence is ``>= threshold``; with
    ``threshold=None``, the ``count`` most confident slots (1 when ``None``). Unmasked
    slots never change. A block with no mask is returned unchanged. The
    ``denoise_select`` op's reference.
    """
    count = 1 if count is None else int(count)
    masked = block == mask_token_id
    scores = torch.where(masked, conf.to(torch.float64), torch.full_like(conf, NEG_INF, dtype=torch.float64))
    if threshold is None:
        chosen = top_k_mask(scores, count) & masked
    else:
        best = argmax_lowest(scores)
        forced = torch.zeros_like(masked).scatter(-1, best.unsqueeze(-1), True)
        chosen = masked & (forced | (scores >= threshold))
    return torch.where(chosen, candidates, block)


def verify_accept(block: torch.Tensor, ar_tokens: torch.Tensor) -> torch.Tensor:
    """Number ``k`` of accepted drafts (int64 scalar): the longest run with
    ``ar_tokens[i] == block[i + 1]``. The emitted tokens are ``ar_tokens[:k + 1]``,
    the bonus (next seed) is ``ar_tokens[k]`` and the cache keeps ``start + k + 1``."""
    match = (ar_tokens[:-1] == block[1:]).to(torch.int64)
    return torch.cumprod(match, dim=-1).sum()
