"""A toy backbone on which self-speculation accepts drafts of every length.

Its "text" is a deterministic function of the context: a causal query at
position ``p`` hashes every token it sees at positions ``0..p`` (in order) and
predicts ``hash % (V - 1)``. So its AR prediction depends on the input token
*and* on everything before it: a wrong seed, bonus token or cache entry changes
the continuation. A mask query at position ``p`` rolls that rule forward from
the clean prefix it sees (the tokens before its block's first mask) to ``p``
and, with probability ``accuracy`` (a hash coin per prefix and position),
predicts the token AR would put there, otherwise a different one. Accepted
draft counts are then geometric-like over ``0..b-1``.

Logits are ``margin`` on the predicted token plus pseudo-random values in
``[0, spread)`` elsewhere, so sampling at T > 0 sometimes leaves the argmax.
Every query checks that it sees a well-formed context (positions ``0..p``
exactly once for a causal query; a contiguous, duplicate-free run for a mask
query), so a cache bookkeeping error raises instead of passing silently.

The same rule is exposed cache-free as :meth:`AcceptingBackbone.forward_dense`,
which the oracles of ``decode_oracles`` call.
"""

from __future__ import annotations

import numpy as np
import torch

from graphrt.backbone import BackboneConfig, ForwardBatch

MASK32 = 0xFFFFFFFF


def _mix(h: int, word: int) -> int:
    """MurmurHash3's fmix32 over ``h * golden + word`` (32-bit)."""
    h = (h * 0x9E3779B1 + word) & MASK32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & MASK32
    return h ^ (h >> 16)


class AcceptingBackbone:
    """Implements :class:`graphrt.backbone.Backbone` (and ``forward_dense``) without a network.

    Parameters
    ----------
    vocab, block_size, rows, max_positions:
        Vocabulary (the mask token is ``vocab - 1``), default block length, cache rows, positions.
    accuracy:
        Probability that a draft token equals the AR token at its position.
    margin, spread:
        Logit of the predicted token over the others, and the range of the others' logits.
    salt:
        Changes the text (another "model").
    eos_token_id:
        The model's EOS (``None``: no EOS).
    """

    def __init__(self, vocab: int = 48, block_size: int = 4, accuracy: float = 0.7, margin: float = 6.0,
                 spread: float = 1.0, salt: int = 0, rows: int = 8, max_positions: int = 512,
                 eos_token_id: int | None = None) -> None:
        self.config = BackboneConfig(vocab_size=vocab, max_positions=max_positions, mask_token_id=vocab - 1,
                                     bos_token_id=None, eos_token_id=eos_token_id, block_size=block_size)
        self.row_capacity = max_positions + 64
        self.accuracy, self.margin, self.spread, self.salt = accuracy, margin, spread, salt
        self.cache: list[dict[int, int]] = [{} for _ in range(rows)]
        self.lengths = [0] * rows
        self.free = list(range(rows))
        self.calls = 0

    # ------------------------------------------------------------------ the rule
    def _hash(self, tokens: list[int]) -> int:
        h = _mix(0x3C6EF372, self.salt)
        for t in tokens:
            h = _mix(h, t)
        return h

    def _row(self, h: int, predicted: int) -> np.ndarray:
        V = self.config.vocab_size
        row = np.random.default_rng(h).random(V) * self.spread
        row[predicted] = self.margin + self.spread
        return row

    def _causal_next(self, h: int) -> int:
        return h % (self.config.vocab_size - 1)

    def _logits(self, seen: list[tuple[int, int]], token: int, position: int, where: str) -> np.ndarray:
        """Logits ``[V]`` of the query (``token`` at ``position``) that sees ``seen`` = [(position, token)]."""
        mask_id = self.config.mask_token_id
        seen = sorted(seen)
        positions = [p for p, _ in seen]
        if token != mask_id:
            before = [(p, t) for p, t in seen if p <= position]
            if [p for p, _ in before] != list(range(position + 1)):
                raise ValueError(f"{where}: a causal query at position {position} must see positions "
                                 f"0..{position} once each, found {[p for p, _ in before]}")
            h = self._hash([t for _, t in before])
            return self._row(h, self._causal_next(h))
        if positions != list(range(len(positions))) or position not in positions:
            raise ValueError(f"{where}: a mask query at position {position} must see a contiguous run "
                             f"0..n including itself, found {positions}")
        clean = []
        for _, t in seen:
            if t == mask_id:
                break
            clean.append(t)
        h = self._hash(clean)
        coin = _mix(_mix(h, 0xD1B54A35), position) / 2.0**32
        truth, hp = self._causal_next(h), h
        for _ in range(len(clean), position):
            hp = _mix(hp, truth)
            truth = self._causal_next(hp)
        if coin < self.accuracy:
            return self._row(hp, truth)
        return self._row(hp, (truth + 1 + hp % (self.config.vocab_size - 3)) % (self.config.vocab_size - 1))

    # ------------------------------------------------------------------ cache-free reference
    def forward_dense(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                      adapter: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, L, V]`` (float64) of queries that see the keys ``mask[b, i]`` allows; no cache."""
        B, L = tokens.shape
        out = torch.zeros(B, L, self.config.vocab_size, dtype=torch.float64)
        for b in range(B):
            toks, pos, att = tokens[b].tolist(), positions[b].tolist(), mask[b].tolist()
            for i in range(L):
                seen = [(pos[j], toks[j]) for j in range(L) if att[i][j]]
                out[b, i] = torch.from_numpy(self._logits(seen, toks[i], pos[i], f"forward_dense row {b} query {i}"))
        return out

    # ------------------------------------------------------------------ the backbone protocol
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """One packed call over the row caches (see :class:`graphrt.backbone.Backbone`)."""
        self.calls += 1
        B, L = batch.tokens.shape
        out = torch.zeros(B, L, self.config.vocab_size, dtype=torch.float64)
        for b, row in enumerate(batch.rows):
            toks, pos = batch.tokens[b].tolist(), batch.positions[b].tolist()
            valid, att = batch.valid[b].tolist(), batch.attention[b].tolist()
            cached = [(p, self.cache[row][p]) for p in range(self.lengths[row])]
            for i in range(L):
                if not valid[i]:
                    continue
                seen = cached + [(pos[j], toks[j]) for j in range(L) if att[i][j] and valid[j]]
                out[b, i] = torch.from_numpy(self._logits(seen, toks[i], pos[i], f"forward row {row} query {i}"))
            for j in range(L):
                if valid[j] and bool(batch.kv_write[b, j]):
                    self.cache[row][pos[j]] = toks[j]
                    self.lengths[row] = max(self.lengths[row], pos[j] + 1)
        return out

    def cache_length(self, row: int) -> int:
        """Cached positions of ``row``."""
        return self.lengths[row]

    def crop(self, row: int, length: int) -> None:
        """Forget positions ``>= length`` of ``row``."""
        self.lengths[row] = min(self.lengths[row], length)
        self.cache[row] = {p: t for p, t in self.cache[row].items() if p < self.lengths[row]}

    def alloc_rows(self, n: int) -> list[int]:
        """Reserve ``n`` rows (empty caches)."""
        if n > len(self.free):
            raise RuntimeError(f"AcceptingBackbone.alloc_rows: asked for {n} rows, found only {len(self.free)} free")
        rows, self.free = self.free[:n], self.free[n:]
        for r in rows:
            self.cache[r], self.lengths[r] = {}, 0
        return rows

    def free_row_count(self) -> int:
        """Rows that :meth:`alloc_rows` can hand out."""
        return len(self.free)

    def free_rows(self, rows: list[int]) -> None:
        """Return rows to the pool."""
        self.free.extend(rows)
