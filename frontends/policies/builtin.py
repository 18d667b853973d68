"""The built-in decode policies, written with the builder.

Each function returns a :class:`graphrt.policy.Policy`; its graph follows
the semantics of the mode in ``docs/design.md`` exactly (see the docstrings). The
policies are written in primitives; the pass pipeline fuses them. :func:`register_modes`
puts every built-in mode into the core's mode registry (:mod:`graphrt.modes`).
"""

from __future__ import annotations

from graphrt import noise
from graphrt.backbone import BackboneConfig
from graphrt.builder import GraphBuilder, Var
from graphrt.ir import Graph
from graphrt.library import (DecodeInputs, accept_length, ban_mask, confidence, decode_inputs, denoise_select,
                             force_end_of_thinking, next_tokens, sample_tokens, token_logprobs)
from graphrt.policy import Policy

__all__ = ["LOOKUP_BLOCK", "LOOKUP_MAX_NGRAM", "ar", "build_ar", "build_diffusion", "build_prompt_lookup",
           "build_self_spec", "build_self_spec_lookup", "context_buffer", "diffusion", "prefill", "prompt_lookup",
           "self_spec", "self_spec_lookup", "verify_block"]

#: prompt-lookup's verified block when none is given: the seed and 7 looked-up drafts. A lookup draft
#: costs nothing to make, so its length is bounded only by how flat the forward cost is in width.
#: Replaying SmolLM2's greedy answers (``bench/lookup_tuning.py``, ``bench/results/lookup_tuning_smollm2.md``):
#: block 8 gives TPF 3.3 on code edits against 2.4 at block 4 and 4.2 at block 16 (whose forward costs
#: 1.4x), and 1.36 against 1.30 on chat.
LOOKUP_BLOCK = 8
#: Longest n-gram the lookups search first (then shorter ones, down to ``min_ngram``): 4 drafts at least
#: as well as 3 on every setting replayed, and a longer match is a safer one.
LOOKUP_MAX_NGRAM = 4


def prefill(b: GraphBuilder, io: DecodeInputs, mask_id: int | None) -> tuple[Var, Var, Var, Var]:
    """Causal prefill writing the prompt's KV, and the first AR token.

    Parameters
    ----------
    b : GraphBuilder
    io : DecodeInputs
        From :func:`graphrt.library.decode_inputs`.
    mask_id : int or None
        The mask token, never sampled (``config.banned_token_id``: ``None`` for a model without one).

    Returns
    -------
    tuple of Var
        ``(cache, seed, seed_logprob, prompt_len)``; ``seed`` is the token at position ``prompt_len``.
    """
    n = b.size(io.prompt)
    logits, cache = b.forward(io.cache, io.prompt, b.arange_like(io.prompt, 0), attention="causal", write="all",
                              logits="last")                       # [1, V]: the head runs on the last token only
    last = ban_mask(b, logits[0], mask_id)                         # [V]
    seed = next_tokens(b, last, n, io)                             # token at position n
    return cache, seed, token_logprobs(b, last, seed), n


def build_ar(config: BackboneConfig) -> Graph:
    """Autoregressive decoding: one causal token per forward after the prefill."""
    b = GraphBuilder("ar")
    io = decode_inputs(b)
    cache, tok, lp, pos = prefill(b, io, config.banned_token_id)
    done = b.emit(tok.unsqueeze(), 1, lp.unsqueeze())

    def step(cache: Var, tok: Var, pos: Var) -> tuple[Var, ...]:
        logits, cache = b.forward(cache, tok.unsqueeze(), pos.unsqueeze(), attention="causal", write="all")
        last = ban_mask(b, logits[0], config.banned_token_id)       # [V]
        nxt = next_tokens(b, last, pos + 1, io)
        done = b.emit(nxt.unsqueeze(), 1, token_logprobs(b, last, nxt).unsqueeze())
        return ~done, cache, nxt, pos + 1

    b.loop(~done, [cache, tok, pos], step, name="decode")
    return b.build()


def _check_block(block_length: int | None, threshold: float | None, what: str) -> None:
    if block_length is not None and (not isinstance(block_length, int) or block_length <= 0):
        raise ValueError(f"{what}: block_length must be a positive int, found {block_length!r}")
    if threshold is not None and not (0.0 <= float(threshold) <= 1.0):
        raise ValueError(f"{what}: threshold must be within [0, 1] (or None for a step schedule), found {threshold!r}")


def _denoise_block(b: GraphBuilder, io: DecodeInputs, cache: Var, block: Var, positions: Var, mask_id: int,
                   eos_id: int | None, threshold: float | None, steps: int, adapter: bool) -> Var:
    """Iterate bidirectional, read-only forwards until no mask is left.

    With ``eos_id``, the block also ends early once an EOS is committed with no
    mask before it; the masks left after it then read as EOS.
    """
    length = block.type.shape[0]  # type: ignore[union-attr]

    def unresolved(block: Var) -> Var:
        masked = block == mask_id
        if eos_id is None:
            return masked.any()
        is_eos = b.cast(block == eos_id, dtype="i64")
        no_eos_before = is_eos.cumsum() == is_eos  # none before this slot
        return (masked & no_eos_before).any()

    n_masks = length - 1
    base, rem = divmod(n_masks, steps) if threshold is None else (0, 0)

    def denoise(block: Var, step: Var) -> tuple[Var, ...]:
        extra = [block == mask_id] if adapter else []
        logits = b.forward(cache, block, positions, *extra, attention="bidirectional", write="none",
                           adapter="mask" if adapter else "none")
        logits = ban_mask(b, logits, mask_id)                     # [b, V]
        cand = sample_tokens(b, logits, positions, io, purpose=noise.DENOISE)
        cand = force_end_of_thinking(b, cand, positions, io)
        conf = confidence(b, logits, cand)
        count = base + b.cast(step < rem, dtype="i64") if threshold is None else None
        block = denoise_select(b, block, cand, conf, mask_id, threshold, count)
        return unresolved(block), block, step + 1

    block, _ = b.loop(unresolved(block), [block, b.const(0)], denoise, name="denoise")
    if eos_id is not None:
        # Early exit left masks only after an EOS: they read as EOS (never as MASK).
        block = b.where(block == mask_id, b.const(eos_id), block)
    return block


def _block_start(b: GraphBuilder, seed: Var, mask_id: int, length: int) -> Var:
    """``[seed, MASK x (length - 1)]``."""
    if length == 1:
        return seed.unsqueeze()
    return b.concat(seed.unsqueeze(), b.fill(length=length - 1, value=mask_id, dtype="i64"))


def build_diffusion(config: BackboneConfig, block_length: int | None = None, threshold: float | None = 0.9,
                    steps: int | None = None) -> Graph:
    """Block diffusion: denoise ``[seed, MASK...]`` blocks, then one causal forward writes the block's KV."""
    blen = block_length or config.block_size
    steps = steps or blen
    b = GraphBuilder("diffusion")
    io = decode_inputs(b)
    cache, seed, seed_lp, start = prefill(b, io, config.banned_token_id)

    def block_step(cache: Var, seed: Var, seed_lp: Var, start: Var) -> tuple[Var, ...]:
        positions = b.arange(start, length=blen)
        block = _block_start(b, seed, config.mask_token_id, blen)
        block = _denoise_block(b, io, cache, block, positions, config.mask_token_id, config.eos_token_id,
                               threshold, steps, adapter=config.denoise_adapter)
        logits, cache = b.forward(cache, block, positions, attention="causal", write="all")
        logits = ban_mask(b, logits, config.banned_token_id)        # [b, V]
        lps = b.concat(seed_lp.unsqueeze(), token_logprobs(b, logits[:-1], block[1:])) if blen > 1 \
            else seed_lp.unsqueeze()
        nxt = next_tokens(b, logits[-1], start + blen, io)
        done = b.emit(block, blen, lps)
        return ~done, cache, nxt, token_logprobs(b, logits[-1], nxt), start + blen

    b.loop(True, [cache, seed, seed_lp, start], block_step, name="block")
    return b.build()


def build_self_spec(config: BackboneConfig, block_length: int | None = None, threshold: float = 0.0) -> Graph:
    """Linear self-speculation: diffusion draft (read-only), causal verify (writes KV), accept longest prefix."""
    blen = block_length or config.block_size
    b = GraphBuilder("self_spec")
    io = decode_inputs(b)
    cache, seed, lp, start = prefill(b, io, config.banned_token_id)
    done = b.emit(seed.unsqueeze(), 1, lp.unsqueeze())

    def cycle(cache: Var, seed: Var, start: Var) -> tuple[Var, ...]:
        positions = b.arange(start, length=blen)
        block = _block_start(b, seed, config.mask_token_id, blen)
        block = _denoise_block(b, io, cache, block, positions, config.mask_token_id, None, threshold, blen,
                               adapter=True)
        going, cache, seed, start, _ = verify_block(b, io, config, cache, block, positions, start)
        return going, cache, seed, start

    b.loop(~done, [cache, seed, start], cycle, name="cycle")
    return b.build()


def verify_block(b: GraphBuilder, io: DecodeInputs, config: BackboneConfig, cache: Var, block: Var, positions: Var,
            start: Var) -> tuple[Var, Var, Var, Var, Var]:
    """Causal verify forward (writes KV), accept the longest matching prefix plus the bonus, emit, commit.

    Parameters
    ----------
    b : GraphBuilder
    io : DecodeInputs
    config : BackboneConfig
    cache : Var
        The cache handle.
    block : Var
        ``[b]`` the seed and the drafts.
    positions : Var
        ``[b]`` their absolute positions (``start ..``).
    start : Var
        The seed's position.

    Returns
    -------
    tuple of Var
        ``(not done, cache, next seed, next start, ar)`` where ``ar [b]`` are the AR tokens after each slot.
    """
    logits, cache = b.forward(cache, block, positions, attention="causal", write="all")
    logits = ban_mask(b, logits, config.banned_token_id)            # [b, V]
    ar = next_tokens(b, logits, positions + 1, io)                # [b] AR token after each slot
    k = accept_length(b, block, ar)
    n = k + 1
    done = b.emit(ar, n, token_logprobs(b, logits, ar))
    cache = b.commit(cache, start + n)
    return ~done, cache, b.gather(ar, k), start + n, ar


def context_buffer(b: GraphBuilder, io: DecodeInputs, config: BackboneConfig, blen: int, seed: Var, start: Var) -> Var:
    """The request's context ``[prompt, seed, 0...]`` in a buffer every position a request can reach fits in.

    Parameters
    ----------
    b : GraphBuilder
    io : DecodeInputs
    config : BackboneConfig
        ``max_positions`` sizes the buffer.
    blen : int
        The block length (a last block may reach past the positions by that much).
    seed, start : Var
        The first AR token and its position (the prompt's length).

    Returns
    -------
    Var
        ``i64[P + max_positions + blen + 1]``.
    """
    ctx = b.concat(io.prompt, b.fill(length=config.max_positions + blen + 1, value=0, dtype="i64"))
    return b.scatter(ctx, start, seed)


def build_prompt_lookup(config: BackboneConfig, block_length: int | None = None, max_ngram: int = LOOKUP_MAX_NGRAM,
                        min_ngram: int = 1) -> Graph:
    """Prompt-lookup decoding: drafts copied from the context's own n-grams, one causal verify forward per cycle."""
    blen = block_length or LOOKUP_BLOCK
    b = GraphBuilder("prompt_lookup")
    io = decode_inputs(b)
    cache, seed, lp, start = prefill(b, io, config.banned_token_id)
    done = b.emit(seed.unsqueeze(), 1, lp.unsqueeze())
    ctx = context_buffer(b, io, config, blen, seed, start)               # prompt + output so far

    def cycle(cache: Var, ctx: Var, seed: Var, start: Var) -> tuple[Var, ...]:
        draft, _ = b.ngram_lookup(ctx, start + 1, k=blen - 1, max_ngram=max_ngram, min_ngram=min_ngram)
        block = b.concat(seed.unsqueeze(), draft)                  # [b] seed + looked-up drafts (0s: no match)
        positions = b.arange(start, length=blen)
        going, cache, nxt, nstart, ar = verify_block(b, io, config, cache, block, positions, start)
        ctx = b.dynamic_update_slice(ctx, start + 1, ar)           # AR tokens join the context (past the
        return going, cache, ctx, nxt, nstart                      # accepted ones they are overwritten later)

    b.loop(~done, [cache, ctx, seed, start], cycle, name="cycle")
    return b.build()


def build_self_spec_lookup(config: BackboneConfig, block_length: int | None = None, max_ngram: int = LOOKUP_MAX_NGRAM,
                           min_ngram: int = 1) -> Graph:
    """Context-augmented linear self-speculation.

    The rule: where the context has an n-gram match (``min_ngram`` .. ``max_ngram``
    tokens), its continuation is the draft and no draft forward is spent (the
    denoise loop finds no mask); otherwise the diffusion forward drafts the block
    as in ``self-spec``. Either way one causal verify forward decides, so the
    output is AR's.
    """
    blen = block_length or config.block_size
    mask_id = config.mask_token_id
    b = GraphBuilder("self_spec_lookup")
    io = decode_inputs(b)
    cache, seed, lp, start = prefill(b, io, config.banned_token_id)
    done = b.emit(seed.unsqueeze(), 1, lp.unsqueeze())
    ctx = context_buffer(b, io, config, blen, seed, start)

    def cycle(cache: Var, ctx: Var, seed: Var, start: Var) -> tuple[Var, ...]:
        draft, count = b.ngram_lookup(ctx, start + 1, k=blen - 1, max_ngram=max_ngram, min_ngram=min_ngram)
        looked_up = b.arange(b.const(0), length=blen - 1) < count  # all slots on a match, none otherwise
        block = b.concat(seed.unsqueeze(), b.where(looked_up, draft, b.const(mask_id)))
        positions = b.arange(start, length=blen)
        block = _denoise_block(b, io, cache, block, positions, mask_id, None, 0.0, blen, adapter=True)
        going, cache, nxt, nstart, ar = verify_block(b, io, config, cache, block, positions, start)
        return going, cache, b.dynamic_update_slice(ctx, start + 1, ar), nxt, nstart

    b.loop(~done, [cache, ctx, seed, start], cycle, name="cycle")
    return b.build()


def ar() -> Policy:
    """Autoregressive decoding (``ar``)."""
    return Policy("ar", build_ar)


def diffusion(block_length: int | None = None, threshold: float | None = 0.9, steps: int | None = None) -> Policy:
    """Block diffusion (``diffusion``).

    Parameters
    ----------
    block_length:
        Block length ``b`` (default: the checkpoint's ``block_size``).
    threshold:
        Commit the most confident masked slot plus all with confidence >= threshold;
        ``None`` uses an even schedule of ``steps`` denoise steps per block.
    steps:
        Denoise steps per block with ``threshold=None`` (default ``b``).
    """
    _check_block(block_length, threshold, "diffusion")
    if steps is not None and (not isinstance(steps, int) or steps <= 0):
        raise ValueError(f"diffusion: steps must be a positive int, found {steps!r}")
    return Policy("diffusion", lambda c: build_diffusion(c, block_length, threshold, steps),
                  {"block_length": block_length, "threshold": threshold, "steps": steps},
                  overshoot=lambda c: (block_length or c.block_size) + 1)


def self_spec(block_length: int | None = None, threshold: float = 0.0) -> Policy:
    """Linear self-speculation (``self-spec``): lossless, output equals AR's.

    ``threshold`` is the draft's denoise threshold (0: one forward fills every mask).
    """
    _check_block(block_length, threshold, "self_spec")
    if threshold is None:
        raise ValueError("self_spec: threshold must be a number in [0, 1], found None")
    return Policy("self-spec", lambda c: build_self_spec(c, block_length, threshold),
                  {"block_length": block_length, "threshold": threshold},
                  overshoot=lambda c: (block_length or c.block_size) + 1)


def _check_lookup(block_length: int | None, max_ngram: int, min_ngram: int, what: str) -> None:
    _check_block(block_length, None, what)
    if block_length is not None and block_length < 2:
        raise ValueError(f"{what}: block_length must be >= 2 (a seed and at least one draft), found {block_length}")
    if not (isinstance(max_ngram, int) and isinstance(min_ngram, int) and 1 <= min_ngram <= max_ngram):
        raise ValueError(f"{what}: expected ints with 1 <= min_ngram <= max_ngram, found min_ngram={min_ngram!r}, "
                         f"max_ngram={max_ngram!r}")


def prompt_lookup(block_length: int | None = None, max_ngram: int = LOOKUP_MAX_NGRAM, min_ngram: int = 1) -> Policy:
    """Prompt-lookup (n-gram) speculative decoding (``prompt-lookup``): lossless, needs no drafter.

    Parameters
    ----------
    block_length:
        Verified block: the seed plus ``block_length - 1`` looked-up drafts (default :data:`LOOKUP_BLOCK`;
        a lookup needs no drafter, so its length is not the checkpoint's ``block_size``).
    max_ngram, min_ngram:
        The n-gram sizes searched in the context, longest first.
    """
    _check_lookup(block_length, max_ngram, min_ngram, "prompt_lookup")
    return Policy("prompt-lookup", lambda c: build_prompt_lookup(c, block_length, max_ngram, min_ngram),
                  {"block_length": block_length, "max_ngram": max_ngram, "min_ngram": min_ngram},
                  overshoot=lambda c: (block_length or LOOKUP_BLOCK) + 1)


def self_spec_lookup(block_length: int | None = None, max_ngram: int = LOOKUP_MAX_NGRAM, min_ngram: int = 1) -> Policy:
    """Context-augmented linear self-speculation (``self-spec-lookup``): lossless, output equals AR's.

    Drafts come from the context's n-grams where it has a match, else from the diffusion forward
    (see :func:`build_self_spec_lookup`).
    """
    _check_lookup(block_length, max_ngram, min_ngram, "self_spec_lookup")
    return Policy("self-spec-lookup", lambda c: build_self_spec_lookup(c, block_length, max_ngram, min_ngram),
                  {"block_length": block_length, "max_ngram": max_ngram, "min_ngram": min_ngram},
                  overshoot=lambda c: (block_length or c.block_size) + 1)
