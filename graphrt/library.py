"""Decode building blocks written in primitives.

Policies call these; each builds the primitive chain whose meaning is the
corresponding fused op of :mod:`graphrt.sampling`. These helpers are the only
spelling of the chains: the fusion pass traces them into its patterns
(:data:`graphrt.passes.fusion.FUSIONS`) and replaces what matches by
``sample``, ``confidence``, ``denoise_select`` and ``verify_accept``. Keeping policies in primitives is what lets a policy
author change one rule (say, the acceptance test) without writing a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphrt import noise, sampling
from graphrt.builder import GraphBuilder, Var
from graphrt.types import CACHE, scalar, tensor

NEG_INF = sampling.NEG_INF


@dataclass
class DecodeInputs:
    """The standard inputs of a decode policy graph."""

    prompt: Var
    cache: Var
    seed: Var
    stream: Var
    temperature: Var
    top_k: Var
    top_p: Var
    force_pos: Var
    force_id: Var


def decode_inputs(b: GraphBuilder) -> DecodeInputs:
    """Declare the standard inputs: ``prompt i64[P]``, ``cache``, ``seed``, ``stream``,
    ``temperature``, ``top_k``, ``top_p``, and the thinking budget's ``force_pos``
    (absolute position where ``force_id`` is forced; -1 for none) and ``force_id``."""
    return DecodeInputs(
        prompt=b.input("prompt", tensor("i64", "P")),
        cache=b.input("cache", CACHE),
        seed=b.input("seed", scalar("i64")),
        stream=b.input("stream", scalar("i64")),
        temperature=b.input("temperature", scalar("float")),
        top_k=b.input("top_k", scalar("i64")),
        top_p=b.input("top_p", scalar("float")),
        force_pos=b.input("force_pos", scalar("i64")),
        force_id=b.input("force_id", scalar("i64")),
    )


def sample_tokens(b: GraphBuilder, logits: Var, positions: Var, io: DecodeInputs, purpose: int = noise.SAMPLE) -> Var:
    """Tokens ``[...]`` from ``logits [..., V]``: greedy at T = 0, else Gumbel-max (fuses to ``sample``).

    ``positions [...]`` are the absolute positions the sampled tokens will occupy.
    Policies pass logits through :func:`ban_mask` first, so no mode ever samples
    the mask token.
    """
    x = b.clean(logits)
    scaled = x / b.maximum(io.temperature, sampling.TEMPERATURE_FLOOR)
    neg = b.const(NEG_INF, "float")
    kept = b.where(b.topk(scaled, io.top_k), scaled, neg)
    kept = b.where(b.top_p(kept, io.top_p), kept, neg)
    g = b.noise(io.seed, io.stream, positions, kept, purpose=purpose)
    sampled = b.argmax(kept + g)
    greedy = b.argmax(logits)
    return b.where(io.temperature > 0.0, sampled, greedy)


def force_end_of_thinking(b: GraphBuilder, tokens: Var, positions: Var, io: DecodeInputs) -> Var:
    """The thinking budget: the token at absolute position ``force_pos`` becomes ``force_id``,
    unless ``force_id`` already occurs earlier among ``tokens`` (a causal run such as a
    verified block). The session sets ``force_pos`` to -1 once the token has been emitted.
    """
    at = positions == io.force_pos
    if tokens.type.shape:  # type: ignore[union-attr]
        seen = b.cast(tokens == io.force_id, dtype="i64")
        at = at & (seen.cumsum() == seen)                   # no force_id before (counts are exact ints)
    return b.where(at, io.force_id, tokens)


def next_tokens(b: GraphBuilder, logits: Var, positions: Var, io: DecodeInputs) -> Var:
    """AR tokens from causal logits: :func:`sample_tokens` then :func:`force_end_of_thinking`."""
    return force_end_of_thinking(b, sample_tokens(b, logits, positions, io), positions, io)


def ban_mask(b: GraphBuilder, logits: Var, mask_token_id: int | None) -> Var:
    """``logits`` with the mask token's logit at ``-inf``: undecided slots are never a prediction.

    ``None`` (a model without a mask token, :attr:`BackboneConfig.banned_token_id
    <graphrt.backbone.BackboneConfig.banned_token_id>`) bans nothing and returns ``logits``.
    """
    return logits if mask_token_id is None else b.ban(logits, index=mask_token_id)


def confidence(b: GraphBuilder, logits: Var, tokens: Var) -> Var:
    """Softmax probability of ``tokens`` under ``logits`` (fuses to ``confidence``)."""
    return b.gather(b.softmax(b.clean(logits)), tokens)


def denoise_select(b: GraphBuilder, block: Var, candidates: Var, conf: Var, mask_token_id: int,
                   threshold: float | None, count: Var | None = None) -> Var:
    """Commit candidates into masked slots of ``block [L]`` (fuses to ``denoise_select``).

    With a threshold: the most confident masked slot plus every masked slot with
    confidence ``>= threshold``. With ``threshold=None``: the ``count`` most
    confident masked slots.
    """
    masked = block == mask_token_id
    scores = b.where(masked, conf, b.const(NEG_INF, "float"))
    if threshold is None:
        if count is None:
            raise ValueError("denoise_select: threshold=None needs a count (slots to commit this step)")
        chosen = b.topk(scores, count) & masked
    else:
        best = b.argmax(scores)
        forced = b.arange(b.const(0), length=_static_len(block)) == best
        chosen = masked & (forced | (scores >= float(threshold)))
    return b.where(chosen, candidates, block)


def accept_length(b: GraphBuilder, block: Var, ar_tokens: Var) -> Var:
    """Longest run with ``ar_tokens[i] == block[i+1]`` (fuses to ``verify_accept``)."""
    match = ar_tokens[:-1] == block[1:]
    return b.cast(match, dtype="i64").cumprod().sum()


def token_logprobs(b: GraphBuilder, logits: Var, tokens: Var) -> Var:
    """Log-probabilities (temperature 1) of ``tokens`` under causal ``logits``."""
    return b.gather(b.log_softmax(b.clean(logits)), tokens)


def _static_len(x: Var) -> int:
    n = x.type.shape[0]  # type: ignore[union-attr]
    if not isinstance(n, int):
        raise ValueError(f"expected a block with a static length, found {x.type}")
    return n
