"""A deterministic toy backbone whose drafts are right where we say so.

The "true" text is ``truth(p)`` at absolute position ``p``. A causal query at
position ``p`` (a non-mask token) predicts ``truth(p + 1)``; a mask query at
position ``p`` predicts ``truth(p)`` unless ``p`` is in ``wrong``, where it
predicts a different token. So AR output is ``truth`` and the acceptance
pattern of self-speculation is known in advance.
"""

from __future__ import annotations

import torch

from graphrt.backbone import BackboneConfig, ForwardBatch


class ToyBackbone:
    """Implements :class:`graphrt.backbone.Backbone` without a network."""

    def __init__(self, vocab: int = 32, block_size: int = 4, wrong: set[int] | None = None, rows: int = 4,
                 max_positions: int = 512) -> None:
        self.config = BackboneConfig(vocab_size=vocab, max_positions=max_positions, mask_token_id=vocab - 1,
                                     bos_token_id=None, eos_token_id=None, block_size=block_size)
        self.row_capacity = max_positions + 64
        self.wrong = set(wrong or ())
        self.lengths = [0] * rows
        self.free = list(range(rows))
        self.calls: list[ForwardBatch] = []

    def truth(self, p: int) -> int:
        return (7 * p + 3) % (self.config.vocab_size - 1)

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        self.calls.append(batch)
        B, L = batch.tokens.shape
        V = self.config.vocab_size
        logits = torch.zeros(B, L, V, dtype=torch.float64)
        for b in range(B):
            for i in range(L):
                p = int(batch.positions[b, i])
                if int(batch.tokens[b, i]) == self.config.mask_token_id:
                    tok = self.truth(p) if p not in self.wrong else (self.truth(p) + 1) % (V - 1)
                else:
                    tok = self.truth(p + 1)
                logits[b, i, tok] = 5.0
            written = batch.positions[b][batch.kv_write[b] & batch.valid[b]]
            if written.numel():
                self.lengths[batch.rows[b]] = max(self.lengths[batch.rows[b]], int(written.max()) + 1)
        return logits

    def cache_length(self, row: int) -> int:
        return self.lengths[row]

    def crop(self, row: int, length: int) -> None:
        self.lengths[row] = min(self.lengths[row], length)

    def alloc_rows(self, n: int) -> list[int]:
        if n > len(self.free):
            raise RuntimeError(f"cannot allocate {n} rows: only {len(self.free)} are free")
        rows, self.free = self.free[:n], self.free[n:]
        return rows

    def free_row_count(self) -> int:
        return len(self.free)

    def free_rows(self, rows: list[int]) -> None:
        self.free.extend(rows)
