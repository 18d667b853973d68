"""Mode ``auto``: adaptive speculation, choosing per request and per cycle how to draft.

Every cycle of a request chooses, with the op ``draft_choice`` (:mod:`graphrt.adaptive`),
a *draft source* -- ``none`` (a plain AR step), ``lookup`` (the context's n-grams, as in
``prompt-lookup``) or ``diffusion`` (a read-only drafter forward over ``[seed, MASK ...]``, as
in ``self-spec``) -- and a *verified width* ``w`` from a small static set (the seed plus
``w - 1`` drafts; ``w = 1`` is the plain step). The cycle then runs the branch of that width:
draft (lookup drafts cost nothing; a diffusion draft is one forward), one causal verify
forward that writes KV, accept the longest matching prefix, emit ``a_0 .. a_k``, commit. Each
emitted token is an AR token under a prefix of AR tokens, so whatever is chosen, the output is
AR's, at T = 0 and at T > 0 with the same seed (the noise is a function of the absolute position).

The rule (the built-in :func:`graphrt.adaptive.expected_rate`): pick the ``(source, w)`` that
maximises the round's expected committed tokens per second given the other requests' share of
the round, ``(G + E(s, w) / n_s) / T_s(R + 1, w, spans)``, with ``E`` the expected tokens
of the cycle from the request's running acceptance by draft slot, ``n_s`` its rounds (2 for a
diffusion draft) and ``T_s`` the measured cost model's time per round of the shared call (a
diffusion draft's forward also pays for the draft adapter; see the rule's docstring). Replace it
with your own: ``auto(rule=my_rule)`` where ``my_rule(state: ChoiceState) -> (source, width)``, or a
policy file (``examples/auto_rule.py``).

Shapes stay static: each width is its own branch (a ``loop`` that runs once when chosen, else
never), so every forward has a static width from the set; the acceptance statistics, the
context and the cache are loop-carried values.

Graph of one cycle::

    draft, count   = ngram_lookup(ctx, start + 1)
    source, width  = draft_choice(stats, count, start, cost, load)      # the rule
    for w in widths:                                                    # exactly one branch runs
        loop(width == w): block = [seed, drafts[:w-1] or MASKs]; denoise (0 or 1 forward);
                          verify forward; accept k; emit(ar, k + 1, info=[source, w, k]); commit
    stats          = acceptance_update(stats, source, width, k)
"""

from __future__ import annotations

from typing import Callable, Sequence

from graphrt.adaptive import LOAD_FIELDS, SOURCES, ChoiceState, register_rule
from graphrt.backbone import BackboneConfig
from graphrt.cost_model import FEATURES
from graphrt.builder import GraphBuilder, Var
from graphrt.ir import Graph
from graphrt.library import DecodeInputs, accept_length, ban_mask, decode_inputs, next_tokens, token_logprobs
from graphrt.policy import Policy
from graphrt.types import tensor

from graphrt.frontends.policies.builtin import LOOKUP_BLOCK, LOOKUP_MAX_NGRAM, _denoise_block, context_buffer, prefill

__all__ = ["auto", "build_auto", "default_widths", "summarize_cycles", "AUTO_MODE"]

AUTO_MODE = "auto"
SOURCE_INDEX = {name: i for i, name in enumerate(SOURCES)}


def default_widths(block: int) -> tuple[int, ...]:
    """The verified widths ``auto`` offers for a block length: 1 (a plain step), 2, 4 (those up to the
    block) and the block, and prompt-lookup's :data:`~graphrt.frontends.policies.builtin.LOOKUP_BLOCK`
    (a lookup draft is free to make, so it may run wider than the drafter's block)."""
    return tuple(sorted(({1, 2, 4} & set(range(1, block + 1))) | {block, LOOKUP_BLOCK}))


def build_auto(config: BackboneConfig, widths: Sequence[int] | None = None,
               sources: Sequence[str] = SOURCES, rule: str = "expected-rate", decay: float = 0.9,
               prior: Sequence[float] = (0.0, 0.6, 0.7), max_ngram: int = LOOKUP_MAX_NGRAM, min_ngram: int = 1,
               idle_decay: float = 0.98) -> Graph:
    """The ``auto`` graph (see the module docstring).

    Parameters
    ----------
    config : BackboneConfig
    widths : sequence of int, optional
        Verified widths offered (default :func:`default_widths` of the block size); 1 is always offered.
    sources : sequence of str
        Draft sources offered, from :data:`graphrt.adaptive.SOURCES`.
    rule : str
        The registered rule ``draft_choice`` asks.
    decay : float
        Per-cycle decay of the acceptance counts of the cycle's source.
    prior : sequence of float
        Acceptance assumed per source before any evidence.
    max_ngram, min_ngram : int
        The lookup's n-gram sizes.
    idle_decay : float
        Per-cycle decay of the other sources' counts (slower: a source given up is retried rarely).

    Returns
    -------
    Graph
    """
    ws = sorted(set(widths or default_widths(config.block_size)) | {1})
    blen = max(ws)
    srcs = sorted({SOURCE_INDEX[s] for s in sources} | {0})
    mask_id = config.mask_token_id
    b = GraphBuilder("auto")
    io = decode_inputs(b)
    cost = b.input("cost", tensor("float", len(FEATURES)))
    load = b.input("load", tensor("float", len(LOAD_FIELDS)))
    cache, seed, lp, start = prefill(b, io, config.banned_token_id)
    done = b.emit(seed.unsqueeze(), 1, lp.unsqueeze())
    ctx = context_buffer(b, io, config, blen, seed, start)
    stats = b.fill(length=6 * max(blen - 1, 1), value=0.0, dtype="float")

    def cycle(cache: Var, ctx: Var, seed: Var, start: Var, stats: Var) -> tuple[Var, ...]:
        if blen > 1:
            draft, count = b.ngram_lookup(ctx, start + 1, k=blen - 1, max_ngram=max_ngram, min_ngram=min_ngram)
        else:
            draft, count = None, b.const(0)
        source, width = b.draft_choice(stats, count, start, cost, load, widths=ws, sources=srcs, rule=rule,
                                       prior=list(prior))
        carried = [cache, ctx, seed, start, b.const(True, "bool"), b.const(0)]
        for w in ws:
            branch = _branch(b, io, config, w, draft, source, mask_id, diffusion=2 in srcs)
            carried = b.loop(width == w, carried, branch, name=f"width{w}")
        cache, ctx, seed, start, going, accepted = carried
        stats = b.acceptance_update(stats, source, width, accepted, decay=decay, idle_decay=idle_decay)
        return going, cache, ctx, seed, start, stats

    b.loop(~done, [cache, ctx, seed, start, stats], cycle, name="cycle")
    return b.build()


def _branch(b: GraphBuilder, io: DecodeInputs, config: BackboneConfig, w: int, draft: Var | None, source: Var,
            mask_id: int, diffusion: bool) -> Callable[..., tuple[Var, ...]]:
    """The body of the width-``w`` branch: draft, verify, accept, emit (with the choice), commit; runs once."""

    def body(cache: Var, ctx: Var, seed: Var, start: Var, going: Var, accepted: Var) -> tuple[Var, ...]:
        positions = b.arange(start, length=w)
        if w == 1:
            block = seed.unsqueeze()
        else:
            drafts = draft[:w - 1]  # type: ignore[index]
            if diffusion:
                drafts = b.where(source == SOURCE_INDEX["diffusion"], b.const(mask_id), drafts)
            block = b.concat(seed.unsqueeze(), drafts)
            if diffusion:  # a diffusion draft: one read-only forward fills the masks (none: the loop never runs)
                block = _denoise_block(b, io, cache, block, positions, mask_id, None, 0.0, w, adapter=True)
        logits, cache = b.forward(cache, block, positions, attention="causal", write="all")
        logits = ban_mask(b, logits, config.banned_token_id)       # [w, V]
        ar = next_tokens(b, logits, positions + 1, io)           # [w] the AR token after each slot
        k = accept_length(b, block, ar) if w > 1 else b.const(0)
        n = k + 1
        info = b.concat(source.unsqueeze(), b.const(w).unsqueeze(), k.unsqueeze())  # [3] what this cycle did
        done = b.emit(ar, n, token_logprobs(b, logits, ar), info)
        if w > 1:  # a plain step's forward wrote exactly its one slot: nothing to crop
            cache = b.commit(cache, start + n)
        ctx = b.dynamic_update_slice(ctx, start + 1, ar)          # AR tokens join the context
        return False, cache, ctx, b.gather(ar, k), start + n, ~done, k

    return body


def auto(widths: Sequence[int] | None = None, sources: Sequence[str] = SOURCES,
         rule: str | Callable[[ChoiceState], tuple[int, int]] = "expected-rate", decay: float = 0.9,
         prior: Sequence[float] = (0.0, 0.6, 0.7), block_length: int | None = None,
         idle_decay: float = 0.98) -> Policy:
    """Adaptive speculation (``auto``): lossless, output equals AR's.

    Parameters
    ----------
    widths:
        Verified widths offered (1 is a plain AR step; default 1, 2, 4, the block size and 8, :func:`default_widths`).
    sources:
        Draft sources offered (``"none"``, ``"lookup"``, ``"diffusion"``); leave ``"diffusion"`` out
        for a checkpoint without a trained drafter.
    rule:
        The choice rule: a registered rule's name, or a function ``rule(state) -> (source, width)``
        (registered here under its module and name).
    decay:
        Per-cycle decay of the acceptance counts of the source a cycle used (in ``[0, 1]``).
    prior:
        Acceptance of a draft slot assumed per source before any evidence.
    block_length:
        With ``widths`` left out: the largest width (default: the checkpoint's block size).
    idle_decay:
        Per-cycle decay of the other sources' counts (in ``[0, 1]``; slower than ``decay``, so a
        source that keeps failing is retried rarely).

    Raises
    ------
    ValueError
        An unknown source, a width below 1, or a decay outside ``[0, 1]``.
    """
    bad = [s for s in sources if s not in SOURCE_INDEX]
    if bad:
        raise ValueError(f"auto: sources expected among {SOURCES}, found {bad}")
    if widths is not None and not all(isinstance(w, int) and w >= 1 for w in widths):
        raise ValueError(f"auto: widths expected ints >= 1, found {list(widths)}")
    if block_length is not None and (not isinstance(block_length, int) or block_length < 1):
        raise ValueError(f"auto: block_length expected an int >= 1, found {block_length!r}")
    for name, value in (("decay", decay), ("idle_decay", idle_decay)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"auto: {name} expected a number in [0, 1], found {value!r}")
    if len(prior) != len(SOURCES):
        raise ValueError(f"auto: prior expected {len(SOURCES)} numbers (one per source {SOURCES}), found {list(prior)}")
    if callable(rule):
        rule = register_rule(f"{rule.__module__}.{rule.__qualname__}", rule, replace=True)
    ws = None if widths is None else tuple(widths)

    def build(config: BackboneConfig) -> Graph:
        chosen = ws or default_widths(block_length or config.block_size)
        return build_auto(config, chosen, tuple(sources), rule, decay, tuple(prior),  # type: ignore[arg-type]
                          idle_decay=idle_decay)

    def overshoot(config: BackboneConfig) -> int:
        return max(ws or default_widths(block_length or config.block_size)) + 1

    return Policy(AUTO_MODE, build, {"widths": ws, "sources": tuple(sources), "rule": rule, "decay": decay,
                                     "idle_decay": idle_decay},
                  overshoot=overshoot)


def summarize_cycles(cycle_info: Sequence[Sequence[int]]) -> dict[str, object]:
    """Per-request summary of ``auto``'s choices (``GenerationResult.cycle_info``).

    Parameters
    ----------
    cycle_info:
        ``(source, width, accepted)`` per cycle.

    Returns
    -------
    dict
        ``{"cycles": n, "sources": {name: {"cycles", "drafted", "accepted", "acceptance_rate",
        "mean_accepted_length"}}, "widths": {w: cycles}}``; the acceptance rate is accepted / drafted
        tokens, the mean accepted length counts the bonus token (tokens per cycle).
    """
    by_source: dict[str, dict[str, float]] = {}
    widths: dict[str, int] = {}
    for entry in cycle_info:
        s, w, k = (int(x) for x in entry[:3])
        name = SOURCES[s] if 0 <= s < len(SOURCES) else str(s)
        d = by_source.setdefault(name, {"cycles": 0, "drafted": 0, "accepted": 0})
        d["cycles"] += 1
        d["drafted"] += w - 1
        d["accepted"] += k
        widths[str(w)] = widths.get(str(w), 0) + 1
    for d in by_source.values():
        d["acceptance_rate"] = d["accepted"] / d["drafted"] if d["drafted"] else 0.0
        d["mean_accepted_length"] = (d["accepted"] + d["cycles"]) / d["cycles"]
    return {"cycles": len(cycle_info), "sources": by_source, "widths": widths}
