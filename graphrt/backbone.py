"""The backbone protocol: what an engine implements to bring its own model.

A backbone owns the model weights and a row-indexed KV cache. The runtime never
touches either directly; it calls :meth:`Backbone.forward` with a packed
:class:`ForwardBatch` and manages cache rows through ``alloc_rows``,
``free_rows`` and ``crop``.

Attention in every decoding mode attends to the *whole* cached prefix of a row
plus a pattern among the new tokens of that row, so a batch carries one boolean
``[B, L, L]`` mask over the new tokens (``True`` = may attend) and a named kind
that a backbone may specialise on:

* ``"causal"``        -- lower-triangular among the new tokens (AR, prefill, verify);
* ``"bidirectional"`` -- all new tokens of a row see each other (diffusion blocks);
* ``"mask"``          -- an arbitrary pattern (quadratic self-speculation, mixed rows).

Padding rows (``valid == False``) attend to themselves only and their logits are
ignored; they never write the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch

ATTENTION_KINDS = ("causal", "bidirectional", "mask")


@dataclass(frozen=True)
class BackboneConfig:
    """The facts about a model that the runtime needs.

    Attributes
    ----------
    vocab_size, max_positions:
        Logit width and the number of absolute positions the model supports.
    mask_token_id, bos_token_id, eos_token_id:
        Special token ids (``eos_token_id`` may be ``None``).
    block_size:
        Default block length of the diffusion and self-speculation modes.
    denoise_adapter:
        Block diffusion's denoise forwards apply the draft adapter to mask tokens, as
        drafts do (a base model taught masks only through its adapter); ``False``: they
        run the base weights (a model trained on masks itself, as the released ones).
    has_mask_token:
        ``False`` for a checkpoint with no mask token: ``mask_token_id`` is then only a
        placeholder marking undecided slots, no prediction bans it (see
        :attr:`banned_token_id`), and the modes that draft with masks are refused.
    """

    vocab_size: int
    max_positions: int
    mask_token_id: int
    bos_token_id: int | None
    eos_token_id: int | None
    block_size: int
    denoise_adapter: bool = False
    has_mask_token: bool = True

    @property
    def banned_token_id(self) -> int | None:
        """The id a committed token may never be (the mask token), or ``None`` when the model has none."""
        return self.mask_token_id if self.has_mask_token else None


@dataclass
class ForwardBatch:
    """One packed backbone call.

    Attributes
    ----------
    rows:
        ``[B]`` cache row of each batch row.
    tokens, positions:
        ``[B, L]`` int64 token ids and absolute positions. Position ``p`` of a
        written token is the cache slot it is written to.
    attention:
        ``[B, L, L]`` bool, ``attention[b, i, j]``: query ``i`` may attend to new
        token ``j``. Every query also attends to the whole cached prefix of its row.
    kind:
        One of :data:`ATTENTION_KINDS`, a hint that ``attention`` has that shape.
    kv_write:
        ``[B, L]`` bool, which tokens write their K/V into the cache.
    adapter:
        ``[B, L]`` bool, which tokens run with the draft adapter (if the model has one).
    valid:
        ``[B, L]`` bool, ``False`` for padding.
    logits:
        ``"all"``; ``"last"``: only each row's last valid token's logits are needed, so a
        backbone may return ``[B, 1, V]`` holding those (running its output head on one
        token per row) instead of ``[B, L, V]``; or ``"index"``: only the ``n < L`` tokens
        ``logit_index`` names per row are needed, so a backbone may return ``[B, n, V]``
        (rows that want all their tokens' logits packed with a longer row that wants its
        last only: the output head runs on ``B * n`` tokens, not on every padded position).
    logit_index:
        ``[B, n]`` int64 token indices per row when ``logits == "index"``, else None.
    """

    rows: list[int]
    tokens: torch.Tensor
    positions: torch.Tensor
    attention: torch.Tensor
    kind: str
    kv_write: torch.Tensor
    adapter: torch.Tensor
    valid: torch.Tensor
    logits: str = "all"
    logit_index: torch.Tensor | None = None

    def last_valid(self) -> torch.Tensor:
        """``[B]`` int64: each row's last valid token (0 for a row with none)."""
        return (self.valid.sum(dim=1) - 1).clamp_min(0)

    @classmethod
    def single(cls, row: int, tokens: torch.Tensor, positions: torch.Tensor, attention: torch.Tensor, kind: str,
               kv_write: torch.Tensor, adapter: torch.Tensor, logits: str = "all") -> "ForwardBatch":
        """One request's forward as a one-row batch (what a program suspends with at a ``forward``):
        ``tokens``, ``positions``, ``kv_write``, ``adapter`` ``[L]`` and ``attention`` ``[L, L]``
        become views with a batch dimension of one (no copy), every token valid."""
        valid = _ones(tokens.shape[0], tokens.device)
        return cls([row], tokens[None], positions[None], attention[None], kind, kv_write[None], adapter[None],
                   valid[None], logits)

    @classmethod
    def pack(cls, batches: Sequence["ForwardBatch"]) -> "ForwardBatch":
        """Pack batches (the requests' one-row forwards) into one call, right-padded to the longest;
        ``kind`` is their common kind when all have the same length, else ``"mask"``. ``logits`` asks for
        what the rows need (a one-token batch's logits are its last token's, whatever it asks): ``"last"``
        when every batch needs only its last token's; ``"index"`` when some need all of theirs but none is
        as wide as the call (verification rows joined by a prompt), each such batch's tokens first in its
        rows of ``logit_index`` and every other batch's last token there (see :func:`row_logits`); else
        ``"all"``. The output head then never runs on a padded position no row asked for. One batch packs
        into itself (no copy).

        Raises
        ------
        ValueError
            There is no batch.
        """
        if not batches:
            raise ValueError("ForwardBatch.pack: expected at least one batch, found none")
        if len(batches) == 1:
            return batches[0]
        B, L = sum(len(b.rows) for b in batches), max(b.tokens.shape[1] for b in batches)
        wants = [1 if b.logits == "last" else b.tokens.shape[1] for b in batches]
        heads = max(wants)  # tokens per row the output head must see
        logits = "last" if heads == 1 else "index" if heads < L else "all"
        if all(b.tokens.shape[1] == L for b in batches):  # no padding: one cat (or a shared view) per field
            kinds = {b.kind for b in batches}
            return cls([r for b in batches for r in b.rows], *(_stack([getattr(b, f) for b in batches], B)
                       for f in ("tokens", "positions", "attention")),
                       kinds.pop() if len(kinds) == 1 else "mask",
                       *(_stack([getattr(b, f) for b in batches], B) for f in ("kv_write", "adapter", "valid")),
                       logits)
        dev = batches[0].tokens.device
        tokens = torch.zeros(B, L, dtype=torch.int64, device=dev)
        positions = torch.zeros(B, L, dtype=torch.int64, device=dev)
        attention = torch.zeros(B, L, L, dtype=torch.bool, device=dev)
        kv_write = torch.zeros(B, L, dtype=torch.bool, device=dev)
        adapter = torch.zeros(B, L, dtype=torch.bool, device=dev)
        valid = torch.zeros(B, L, dtype=torch.bool, device=dev)
        i = 0
        for b in batches:
            k, n = b.tokens.shape
            tokens[i:i + k, :n] = b.tokens
            positions[i:i + k, :n] = b.positions
            attention[i:i + k, :n, :n] = b.attention
            kv_write[i:i + k, :n] = b.kv_write
            adapter[i:i + k, :n] = b.adapter
            valid[i:i + k, :n] = b.valid
            i += k
        kinds = {b.kind for b in batches}
        kind = kinds.pop() if len(kinds) == 1 and all(b.tokens.shape[1] == L for b in batches) else "mask"
        index = None
        if logits == "index":  # each row's wanted tokens first (the last one repeated to width n)
            firsts = torch.arange(heads, device=dev)
            index = torch.cat([(firsts.clamp(max=w - 1).expand(len(b.rows), heads) if w > 1 else
                                b.last_valid()[:, None].expand(len(b.rows), heads))
                               for b, w in zip(batches, wants)])
        return cls([r for b in batches for r in b.rows], tokens, positions, attention, kind, kv_write, adapter, valid,
                   logits, index)


def row_logits(logits: torch.Tensor, width: int, i: int, n: int, last: bool) -> torch.Tensor:
    """Row ``i``'s logits from a backbone call ``width`` tokens wide, for a batch of ``n`` tokens that asked
    for its last token's only (``last``) or for all of its tokens': ``[1, V]`` or ``[n, V]``.

    ``logits`` is ``[B, width, V]`` (every token's: row ``i``'s tokens first), or a narrower ``[B, m, V]``
    (what ``"last"`` and ``"index"`` calls may return: a row that asked for all its tokens has them first, any
    other row its last token first)."""
    if logits.shape[1] == width:
        return logits[i, n - 1:n] if last else logits[i, :n]
    return logits[i, :1] if last else logits[i, :n]


def _stack(parts: list[torch.Tensor], rows: int) -> torch.Tensor:
    """``parts`` (each ``[k, ...]``) joined along the batch dimension into ``[rows, ...]``: an expanded view
    when every part is the same one-row memory (the constant masks and flags the policies share), else a cat."""
    first = parts[0]
    if first.shape[0] == 1 and all(p.data_ptr() == first.data_ptr() and p.shape == first.shape
                                   and p.stride() == first.stride() and p.dtype == first.dtype for p in parts):
        return first.expand(rows, *first.shape[1:])
    return torch.cat(parts)


_ONES: dict[tuple[int, torch.device], torch.Tensor] = {}


def _ones(n: int, device: torch.device) -> torch.Tensor:
    """A shared ``[n]`` all-True flag tensor (read only)."""
    t = _ONES.get((n, device))
    if t is None:
        t = _ONES[(n, device)] = torch.ones(n, dtype=torch.bool, device=device)
    return t


@runtime_checkable
class Backbone(Protocol):
    """A model forward over a KV cache that the backbone owns and indexes by row."""

    config: BackboneConfig

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """Run one packed call and return logits ``[B, L, V]`` (or ``[B, 1, V]``, each row's last
        valid token's, when ``batch.logits == "last"``, or ``[B, n, V]``, the tokens of
        ``batch.logit_index``, when it is ``"index"``; returning all is also correct).

        Queries attend to their row's cached prefix ``[0, cache_length(row))``
        plus the new tokens allowed by ``batch.attention``. Tokens with
        ``kv_write`` store their K/V at slot ``positions[b, i]``; the row's
        cache length then becomes ``max(old, max written position + 1)``. The batch's
        tensors are inputs only (they may be views of the requests' own tensors or shared
        constants): a backbone must not modify them.
        """
        ...

    def cache_length(self, row: int) -> int:
        """Number of valid cached positions of ``row``."""
        ...

    def crop(self, row: int, length: int) -> None:
        """Forget cached positions ``>= length`` of ``row``."""
        ...

    def alloc_rows(self, n: int) -> list[int]:
        """Reserve ``n`` free cache rows (each holds ``config.max_positions`` slots
        unless the backbone was built with a smaller row capacity).

        Raises ``RuntimeError`` when fewer than ``n`` rows are free.
        """
        ...

    def free_row_count(self) -> int:
        """Number of rows that :meth:`alloc_rows` can still hand out."""
        ...

    def free_rows(self, rows: list[int]) -> None:
        """Return rows to the free pool (their contents are discarded)."""
        ...
