"""Tiny random models and hand-written oracles of docs/design.md's decoding algorithms.

The oracles recompute every forward densely (no KV cache, no graph, no session)
straight from the algorithm's description, so they share nothing with the
runtime but the model's ``forward_dense`` and, at T > 0, the sampling reference
(:func:`graphrt.sampling.sample` with the counter-based noise of
:mod:`graphrt.noise`). Each oracle also counts the forwards its definition
spends, so a test can compare tokens *and* forward counts with graphrt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

import graphrt
from graphrt import noise
from graphrt.api import Model
from graphrt.frontends.models.checkpoint import init_random_
from graphrt.frontends.models.config import default_test_config
from graphrt.frontends.models.transformer import Transformer, TransformerBackbone
from graphrt.sampling import sample

F64 = torch.float64


def tiny_model(seed: int = 0, dtype: torch.dtype = F64, max_batch: int = 8, **overrides) -> Model:
    """A random tiny model (vocab 96) behind a TransformerBackbone."""
    net = init_random_(Transformer(default_test_config(**overrides)), seed).to(dtype).eval()
    return Model(TransformerBackbone(net, max_rows=max_batch), None, f"random-{seed}")


def dense_net(model: Model) -> Any:
    """The object whose ``forward_dense`` the oracles call: the transformer, or a toy backbone itself."""
    backbone = model.backbone
    return backbone.model if isinstance(backbone, TransformerBackbone) else backbone


@dataclass(frozen=True)
class Draws:
    """How a token is picked from a logit row: greedy at T = 0, else Gumbel-max with counter-based noise."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stream: int = 0

    def pick(self, row: torch.Tensor, position: int, purpose: int) -> int:
        """The token for absolute ``position`` from logits ``row [V]`` (``purpose``: SAMPLE or DENOISE)."""
        return self.pick_rows(row[None], [position], purpose)[0]

    def pick_rows(self, rows: torch.Tensor, positions: list[int], purpose: int) -> list[int]:
        """:meth:`pick` for each row of ``rows [n, V]`` at its position (one call into the reference)."""
        if self.temperature == 0:
            return [_argmax(r) for r in rows]
        return sample(rows, torch.tensor(positions), self.seed, self.stream, self.temperature, self.top_k,
                      self.top_p, purpose=purpose).tolist()


GREEDY = Draws()


def _dense(net: Any, seq: list[int], block_from: int | None = None, positions: list[int] | None = None,
           mask: torch.Tensor | None = None, adapter: list[bool] | None = None) -> torch.Tensor:
    """Logits ``[L, V]`` over ``seq`` at ``positions`` (default ``0..L-1``).

    The attention ``mask [L, L]`` defaults to causal, except that rows >= block_from
    see the whole block (and the prefix). The mask token's logit is -inf: no mode
    ever predicts it.
    """
    L = len(seq)
    if mask is None:
        mask = torch.ones(L, L, dtype=torch.bool).tril()
        if block_from is not None:
            mask[block_from:, block_from:] = True
    pos = torch.tensor([positions if positions is not None else list(range(L))])
    ad = None if adapter is None else torch.tensor([adapter])
    with torch.no_grad():
        logits = net.forward_dense(torch.tensor([seq]), pos, mask[None], ad)[0].to(F64)
    logits[:, net.config.mask_token_id] = float("-inf")
    return logits


def _argmax(row: torch.Tensor) -> int:
    best = max(row.tolist())
    return row.tolist().index(best)


def ar_oracle(model: Model, prompt: list[int], n: int, draws: Draws = GREEDY) -> list[int]:
    """Plain AR: recompute the whole sequence for every token; the token at position p uses p's draw."""
    net = dense_net(model)
    seq = list(prompt)
    for _ in range(n):
        seq.append(draws.pick(_dense(net, seq)[-1], len(seq), noise.SAMPLE))
    return seq[len(prompt):]


def greedy_oracle(model: Model, prompt: list[int], n: int) -> list[int]:
    """Plain greedy AR (:func:`ar_oracle` at T = 0)."""
    return ar_oracle(model, prompt, n)


def _denoise(net: Any, seq: list[int], block: list[int], threshold: float | None, steps: int, draws: Draws,
             adapter: bool, eos: int | None) -> tuple[list[int], int]:
    """docs/design.md's denoise loop over ``block`` after the prefix ``seq``; returns (block, forwards).

    With ``eos``, the loop ends once an EOS is committed with no mask before it.
    """
    mask_id, b, start = net.config.mask_token_id, len(block), len(seq)
    block, step, forwards = list(block), 0, 0

    def unresolved() -> bool:
        for tok in block:
            if eos is not None and tok == eos:
                return False
            if tok == mask_id:
                return True
        return False

    while unresolved():
        ad = [False] * start + [t == mask_id for t in block] if adapter else None
        logits = _dense(net, seq + block, block_from=start, adapter=ad)[start:]
        forwards += 1
        masked = [i for i, t in enumerate(block) if t == mask_id]
        cand = dict(zip(masked, draws.pick_rows(logits[masked], [start + i for i in masked], noise.DENOISE)))
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
    return block, forwards


def diffusion_oracle(model: Model, prompt: list[int], n: int, b: int, threshold: float | None,
                     steps: int | None = None, stop_at_eos: bool = True) -> tuple[list[int], int]:
    """docs/design.md's block diffusion at T = 0; returns (tokens cut at EOS/budget, forwards)."""
    net, cfg = dense_net(model), model.config
    mask_id, eos = cfg.mask_token_id, cfg.eos_token_id
    seq = list(prompt)
    seed = _argmax(_dense(net, seq)[-1])
    forwards, out = 1, []
    while len(out) < n:
        block, spent = _denoise(net, seq, [seed] + [mask_id] * (b - 1), threshold, steps or b, GREEDY,
                                adapter=False, eos=eos)
        block = [eos if t == mask_id else t for t in block]
        logits = _dense(net, seq + block)
        forwards += spent + 1
        seed = _argmax(logits[-1])
        seq += block
        out += block
        if stop_at_eos and eos in out:
            out = out[: out.index(eos) + 1]
            break
    return out[:n], forwards


@dataclass
class SpecTrace:
    """What a self-speculation oracle emitted: tokens (cut at the budget), forwards, accepted drafts per cycle."""

    tokens: list[int]
    forwards: int
    accepted: list[int] = field(default_factory=list)


def _accept(block: list[int], ar: list[int]) -> int:
    """Longest run ``k`` with ``ar[i] == block[i + 1]``."""
    k = 0
    while k + 1 < len(block) and ar[k] == block[k + 1]:
        k += 1
    return k


def _finished(out: list[int], n: int, eos: int | None) -> bool:
    return len(out) >= n or (eos is not None and eos in out)


def _cut(out: list[int], n: int, eos: int | None) -> list[int]:
    if eos is not None and eos in out:
        out = out[: out.index(eos) + 1]
    return out[:n]


def self_spec_oracle(model: Model, prompt: list[int], n: int, b: int, threshold: float = 0.0,
                     draws: Draws = GREEDY, stop_at_eos: bool = False) -> SpecTrace:
    """docs/design.md's linear self-speculation, every forward recomputed densely.

    Per cycle: the block ``[seed, MASK x (b-1)]`` at positions ``start..start+b-1`` is
    drafted by bidirectional forwards (adapter on the masks, candidates drawn with the
    DENOISE purpose at their positions), then forwarded causally; ``a_i`` is the AR
    token after slot i (SAMPLE draw at position ``start + i + 1``). ``k`` drafts match,
    ``a_0..a_k`` are emitted, the context keeps the seed and the k matched drafts, and
    ``a_k`` is the next seed.
    """
    net, mask_id = dense_net(model), model.config.mask_token_id
    eos = model.config.eos_token_id if stop_at_eos else None
    seq = list(prompt)
    seed = draws.pick(_dense(net, seq)[-1], len(seq), noise.SAMPLE)
    trace = SpecTrace([seed], 1)
    while not _finished(trace.tokens, n, eos):
        start = len(seq)
        block, spent = _denoise(net, seq, [seed] + [mask_id] * (b - 1), threshold, b, draws, adapter=True, eos=None)
        logits = _dense(net, seq + block)[start:]                                   # [b, V] causal verify
        ar = draws.pick_rows(logits, [start + i + 1 for i in range(b)], noise.SAMPLE)
        k = _accept(block, ar)
        trace.forwards += spent + 1
        trace.accepted.append(k)
        trace.tokens += ar[: k + 1]
        seq += block[: k + 1]
        seed = ar[k]
    trace.tokens = _cut(trace.tokens, n, eos)
    return trace


def _quadratic_layout(prefix: int, draft: list[int], mask_id: int) -> tuple[list[int], list[int], torch.Tensor,
                                                                             list[bool]]:
    """Tokens, positions, attention ``[C + b(b+1)]^2`` and adapter flags of one quadratic cycle.

    Row i is ``[d_i, MASK x b]`` at positions ``prefix + i ..``; ``d_i`` sees the prefix and
    ``d_0..d_i``; row i's masks see the prefix, ``d_0..d_i`` and each other.
    """
    b = len(draft)
    toks, pos, chain_of, row_of = [], [], [], []
    for i in range(b):
        for j in range(b + 1):
            toks.append(draft[i] if j == 0 else mask_id)
            pos.append(prefix + i + j)
            chain_of.append(j == 0)
            row_of.append(i)
    L = prefix + len(toks)
    mask = torch.zeros(L, L, dtype=torch.bool)
    mask[:prefix, :prefix] = torch.ones(prefix, prefix, dtype=torch.bool).tril()
    mask[prefix:, :prefix] = True
    chain, row = torch.tensor(chain_of), torch.tensor(row_of)
    sees_chain = chain[None, :] & (row[None, :] <= row[:, None])                 # [query, key]
    same_row_masks = ~chain[:, None] & ~chain[None, :] & (row[None, :] == row[:, None])
    mask[prefix:, prefix:] = sees_chain | same_row_masks
    return toks, pos, mask, [not c for c in chain_of]


def quadratic_oracle(model: Model, prompt: list[int], n: int, b: int, draws: Draws = GREEDY,
                     stop_at_eos: bool = False) -> SpecTrace:
    """docs/design.md's quadratic self-speculation (one forward per cycle), recomputed densely.

    First forward: prompt (causal) + b masks (seeing the prompt and all masks) gives
    the seed and the first draft (slot 0 := seed). Each cycle then forwards the
    ``b(b+1)`` layout of :func:`_quadratic_layout`; acceptance as in the linear mode;
    the next draft is row k's mask predictions with slot 0 := the bonus ``a_k``.
    Forwards: 1 + one per cycle.
    """
    net, mask_id = dense_net(model), model.config.mask_token_id
    eos = model.config.eos_token_id if stop_at_eos else None
    P = len(prompt)
    mask = torch.ones(P + b, P + b, dtype=torch.bool).tril()
    mask[P:, P:] = True
    logits = _dense(net, list(prompt) + [mask_id] * b, mask=mask, adapter=[False] * P + [True] * b)
    seed = draws.pick(logits[P - 1], P, noise.SAMPLE)
    draft = [seed] + draws.pick_rows(logits[P + 1:], list(range(P + 1, P + b)), noise.DENOISE)
    seq, trace = list(prompt), SpecTrace([seed], 1)
    while not _finished(trace.tokens, n, eos):
        start = len(seq)
        toks, pos, att, ad = _quadratic_layout(start, draft, mask_id)
        logits = _dense(net, seq + toks, positions=list(range(start)) + pos, mask=att,
                        adapter=[False] * start + ad)[start:]                       # [b(b+1), V]
        ar = draws.pick_rows(logits[::b + 1], [start + i + 1 for i in range(b)], noise.SAMPLE)
        k = _accept(draft, ar)
        trace.forwards += 1
        trace.accepted.append(k)
        trace.tokens += ar[: k + 1]
        seq += draft[: k + 1]
        row = k * (b + 1) + 1
        draft = [ar[k]] + draws.pick_rows(logits[row + 1:row + b], [start + k + 1 + j for j in range(1, b)],
                                          noise.DENOISE)
    trace.tokens = _cut(trace.tokens, n, eos)
    return trace


def run(model: Model, prompt: list[int], mode: str, opt_level: int = 1, block_length: int | None = None,
        threshold: float | None = None, **params) -> graphrt.GenerationResult:
    """``graphrt.generate`` with the compiled policy of ``mode``."""
    return graphrt.generate(model, prompt, mode=mode, block_length=block_length, threshold=threshold,
                            opt_level=opt_level, **params)
