"""A row-indexed KV cache allocated once, up front, and attended where it lies.

Storage is one K and one V tensor per layer, ``[rows + 1, kv_heads, slots, head_dim]``
with ``slots = capacity + scratch`` (one tensor per layer, so a compiled forward
updates each in place rather than through a view of a larger one), and a
host-side length per row. A row
belongs to one request; rows advance by different amounts each round. The extra
storage row (index ``rows``) is where padding rows of a packed call put their
K/V, so they never touch a real row.

A forward is planned once per call (:meth:`RowKVCache.plan`): token ``i`` of batch
row ``b`` that writes stores its K/V at slot ``positions[b, i]``; a token that
must not persist (a denoise or draft token) goes to a *scratch* slot after the
row's end (``end + rank`` among the row's non-writing tokens, ``end`` the row's
length after this call's writes), which the row's length never counts. Every
token therefore has its own slot, even when several share one absolute position
(the quadratic self-speculation layout). Padding tokens of a real row (``valid``
False) all share the one slot after the row's last scratch slot, so padding a row to a
wide call costs it one slot, not one per padding token. A plan may also add whole padding
rows (``pad_rows``, to bring a call to a bucketed batch size): they never write, their
tokens all sit in the *padding slot* of whatever storage row they borrow, one slot per row
after the scratch slots that no real token ever uses (so a compile that runs padding rows
alone, on another thread, never disturbs a live call).

A plan hands the forward flat tensors: per layer the K and V storage its indices
address, the ``index_put_`` indices of the new tokens, and, when the call's rows are
not one contiguous range, where they lie in the range. For a contiguous range of
rows (batch 1 always) the storage tensors are views of exactly those rows, so each
layer writes the new K/V first (one ``index_put_``) and attends over the rows' first
``keys`` slots in place, masked by the per-row lengths: nothing proportional to the
cached prefix is copied per forward. Rows in increasing order whose range is at most
twice their number (a server's rows once some requests have finished: rows 0-15 less
three) are *spread*: the views span the range, attention runs over all of it with
the holes' queries idle, and only the call's own queries and outputs move (a few
kilobytes per layer), where gathering the rows would copy their K/V spans every
layer (SmolLM2, 13 of 16 rows at 1,000 cached tokens: 159.7 ms gathered, 101.6 ms
spread, 91.1 ms for rows 0-12; ``bench/packed_calls.py``). Other scatters gather.
Because the views' offsets are not part of their shape, a compiled forward serves
every row range of a given size with one graph.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass

import torch


@dataclass
class SlotPlan:
    """Where one packed call's tokens live in the cache (computed on the host, once per call).

    Attributes
    ----------
    rows:
        ``B`` storage rows of the call's own rows (padding rows map to the spare storage row).
    lengths:
        ``B`` cached lengths before the call (0 for padding rows).
    ends:
        ``B`` lengths after the call's writes.
    slot:
        ``[B, L]`` int64 slot of every token of the call's own rows (on the cache's device).
    keys:
        Key slots every query row spans: ``max(slot) + 1`` (at least the longest prefix).
    k, v:
        Per layer, the storage the call writes and attends: views of rows
        ``rows[0] .. rows[0] + B + pad_rows - 1`` when those are a contiguous range that
        fits the storage, else the whole storage (see ``gather``).
    index:
        The ``index_put_`` indices into ``k[layer]`` of the ``B + pad_rows`` rows' tokens:
        ``(row [B', L, 1], kv head [1, 1, KV], slot [B', L, 1])``.
    gather:
        None when ``k``/``v`` are views of the call's rows; else the ``[B + pad_rows]``
        storage rows to gather for attention.
    spread:
        None, or ``[B]`` int64 when ``k``/``v`` are views of a range of rows with holes:
        each call row's index in the range (attention runs over the range, the holes idle).
    contiguous_prefill:
        Every row starts empty and its valid tokens, which come first in the row, all
        write at ``0..n-1`` (only padding after them): attention of the valid tokens is
        then plain causal self-attention over the new tokens.
    """

    rows: list[int]
    lengths: list[int]
    ends: list[int]
    slot: torch.Tensor
    keys: int
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    index: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    gather: torch.Tensor | None
    contiguous_prefill: bool
    spread: torch.Tensor | None = None


class RowKVCache:
    """K/V storage for ``rows`` requests of up to ``capacity`` positions each.

    Parameters
    ----------
    rows, layers, kv_heads, capacity, head_dim:
        Sizes; ``capacity`` is the number of positions a row can hold.
    dtype, device:
        Of the storage.
    scratch:
        Extra slots per row after ``capacity`` for tokens that do not persist
        (at least 1); a call's non-writing tokens of one row need
        ``end + count <= capacity + scratch``.

    Attributes
    ----------
    lengths:
        ``list[int]``, the valid cached length of every row (host side).
    """

    def __init__(self, rows: int, layers: int, kv_heads: int, capacity: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", scratch: int = 1) -> None:
        if min(rows, layers, kv_heads, capacity, head_dim) <= 0:
            raise ValueError(f"RowKVCache: expected positive sizes, found rows={rows}, layers={layers}, "
                             f"kv_heads={kv_heads}, capacity={capacity}, head_dim={head_dim}")
        self.rows, self.layers, self.kv_heads = rows, layers, kv_heads
        self.capacity, self.head_dim = capacity, head_dim
        self.pad_slot = capacity + max(int(scratch), 1)  # padding rows' slot, never a real token's
        self.slots = self.pad_slot + 1
        shape = (rows + 1, kv_heads, self.slots, head_dim)  # row `rows`: padding rows' slots
        self._k = [_lazy_zeros(shape, dtype, device) for _ in range(layers)]
        self._v = [_lazy_zeros(shape, dtype, device) for _ in range(layers)]
        self.device = self._k[0].device
        self._kv_index = torch.arange(kv_heads, device=self.device)[None, None, :]  # [1, 1, KV]
        self.lengths: list[int] = [0] * rows
        self._free: list[int] = list(range(rows))
        self._allocated: set[int] = set()
        self._views: dict[tuple[int, int], tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]] = {}

    @property
    def k(self) -> torch.Tensor:
        """``[rows, layers, kv_heads, capacity, head_dim]`` copy of the keys (inspection)."""
        return torch.stack(self._k, 1)[:self.rows, :, :, :self.capacity]

    @property
    def v(self) -> torch.Tensor:
        """``[rows, layers, kv_heads, capacity, head_dim]`` copy of the values (inspection)."""
        return torch.stack(self._v, 1)[:self.rows, :, :, :self.capacity]

    # ------------------------------------------------------------------ rows
    def alloc_rows(self, n: int) -> list[int]:
        """Reserve ``n`` free rows (lowest ids first), each with length 0.

        Raises
        ------
        RuntimeError
            Fewer than ``n`` rows are free.
        """
        if n < 0:
            raise ValueError(f"alloc_rows: expected n >= 0, found {n}")
        if n > len(self._free):
            raise RuntimeError(f"KV cache: cannot allocate {n} rows: only {len(self._free)} of "
                               f"{self.rows} are free (free some rows or build a larger cache)")
        self._free.sort()
        out, self._free = self._free[:n], self._free[n:]
        for r in out:
            self.lengths[r] = 0
            self._allocated.add(r)
        return out

    def free_rows(self, rows: list[int]) -> None:
        """Return ``rows`` to the free pool (their contents are discarded).

        Raises
        ------
        ValueError
            A row is not currently allocated.
        """
        for r in rows:
            if r not in self._allocated:
                raise ValueError(f"free_rows: row {r} is not allocated (allocated: {sorted(self._allocated)})")
        for r in rows:
            self._allocated.discard(r)
            self.lengths[r] = 0
            self._free.append(r)

    def free_row_count(self) -> int:
        """Number of rows :meth:`alloc_rows` can still hand out."""
        return len(self._free)

    def length(self, row: int) -> int:
        """Valid cached length of ``row``."""
        self._check_row(row)
        return self.lengths[row]

    def crop(self, row: int, length: int) -> None:
        """Forget positions ``>= length`` of ``row`` (a longer ``length`` changes nothing)."""
        self._check_row(row)
        if length < 0:
            raise ValueError(f"crop: expected length >= 0, found {length} (row {row})")
        self.lengths[row] = min(self.lengths[row], int(length))

    def _check_row(self, row: int) -> None:
        if not 0 <= row < self.rows:
            raise ValueError(f"KV cache: row expected in [0, {self.rows}), found {row}")

    # ------------------------------------------------------------------ one call
    def plan(self, rows: list[int], positions: torch.Tensor, write: torch.Tensor,
             valid: torch.Tensor | None = None, pad_rows: int = 0, spread: bool = False) -> SlotPlan:
        """Place one call's tokens (see the module docstring); nothing is written yet.

        Parameters
        ----------
        rows:
            ``B`` row ids; an id outside ``[0, rows)`` is a padding row (no prefix, no writes).
        positions:
            ``[B, L]`` int64 absolute positions = the slots of writing tokens.
        write:
            ``[B, L]`` bool, which tokens persist their K/V.
        valid:
            ``[B, L]`` bool, ``False`` for padding tokens (default: all valid); they never
            write and share one slot per row (see the module docstring).
        pad_rows:
            Whole padding rows to append (their tokens never write and are never attended).
        spread:
            Rows with holes may be laid out as views of their range (:attr:`SlotPlan.spread`) rather
            than gathered; the caller's attention then handles the range (the eager forward does, a
            compiled graph, which guards on the layout, does not).

        Raises
        ------
        ValueError
            A written position is outside ``[0, capacity)``, or a row's non-writing
            tokens do not fit its scratch slots.
        """
        B, L = positions.shape
        pad = [not 0 <= r < self.rows for r in rows]
        srows = [self.rows if p else r for r, p in zip(rows, pad)]
        lengths = [0 if p else self.lengths[r] for r, p in zip(srows, pad)]
        pos_l = positions.detach().to("cpu", torch.long).tolist()  # [B][L], host lists: a few tokens per row
        write_l = write.detach().to("cpu", torch.bool).tolist()
        valid_l = [[True] * L] * B if valid is None else valid.detach().to("cpu", torch.bool).tolist()
        slots_l: list[list[int]] = []
        ends: list[int] = []
        written = [p for prow, wrow, pd in zip(pos_l, write_l, pad) if not pd for p, w in zip(prow, wrow) if w]
        if written and (min(written) < 0 or max(written) >= self.capacity):
            raise ValueError(f"KV cache write: positions expected in [0, {self.capacity}) (row capacity), "
                             f"found [{min(written)}, {max(written)}] in rows {rows}")
        for prow, wrow, vrow, pd, length in zip(pos_l, write_l, valid_l, pad, lengths):
            wrow = [False] * L if pd else [w and v for w, v in zip(wrow, vrow)]
            end = max([length] + [p + 1 for p, w in zip(prow, wrow) if w])
            scratch = end + sum(v and not w for v, w in zip(vrow, wrow))  # the padding tokens' shared slot
            rank, srow = 0, []
            for p, w, v in zip(prow, wrow, vrow):  # non-writing tokens: their own slots after the row's end
                srow.append(p if w else end + rank if v else scratch)
                rank += v and not w
            slots_l.append(srow)
            ends.append(end)
        keys = max([max(r) + 1 for r in slots_l if r] + lengths + [0])
        if keys > self.pad_slot:
            raise ValueError(f"KV cache: a call of {L} tokens needs {keys} slots in rows {rows} (its non-writing "
                             f"tokens go after the row's end), but a row holds {self.pad_slot} "
                             f"(capacity {self.capacity} + scratch {self.pad_slot - self.capacity})")
        dev = self.device
        slot = torch.tensor(slots_l, dtype=torch.long, device=dev).view(B, L)  # [B, L]
        prefill = L > 0 and max(lengths, default=0) == 0 and all(
            vrow == [True] * n + [False] * (L - n) and srow[:n] == list(range(n)) and all(wrow[:n])
            for srow, wrow, vrow, n in zip(slots_l, write_l, valid_l, (sum(v) for v in valid_l)))
        k, v, index, gather, spread_rows = self._layout(srows, slot, pad_rows, spread=spread)
        return SlotPlan(srows, lengths, ends, slot, keys, k, v, index, gather, prefill, spread_rows)

    def padding_plan(self, batch: int, width: int, views: bool) -> SlotPlan:
        """A call of ``batch`` padding rows of ``width`` tokens only, laid out as a real call of that size
        is (row views when ``views``, else gathered rows), with ``keys`` 1: what a compile runs, since it
        writes nothing but padding slots and its output is never read."""
        empty = torch.zeros((0, width), dtype=torch.long, device=self.device)
        k, v, index, gather, _ = self._layout([], empty, batch, gather=not views)
        return SlotPlan([], [], [], empty, 1, k, v, index, gather, False)

    def _layout(self, srows: list[int], slot: torch.Tensor, pad_rows: int, gather: bool = False,
                spread: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor], tuple[torch.Tensor, ...],
                                               torch.Tensor | None, torch.Tensor | None]:
        """The storage, ``index_put_`` indices, gather rows and spread indices of a call's rows ``srows``
        (slots ``slot``) plus ``pad_rows`` padding rows (see :class:`SlotPlan`)."""
        dev, B, L = self.device, len(srows), slot.shape[1]
        first, width = (srows[0] if srows else 0), len(srows) + pad_rows
        if width > B:  # padding rows' tokens: the padding slot
            slot = torch.cat([slot, torch.full((width - B, L), self.pad_slot, dtype=torch.long, device=dev)])
        index_slot = slot[:, :, None]  # [B', L, 1]
        span = srows[-1] - first + 1 if srows else 0
        if not gather and srows == list(range(first, first + B)) and first + width <= self.rows + 1:
            k, v, row_index = self._range_views(first, width)
            return k, v, (row_index[:, None, None].expand(width, L, 1), self._kv_index, index_slot), None, None
        if (spread and not pad_rows and span <= 2 * B
                and all(a < b for a, b in zip(srows, srows[1:]))):  # a range with holes: views of all of it
            k, v, _ = self._range_views(first, span)
            local = torch.tensor([r - first for r in srows], dtype=torch.long, device=dev)
            return k, v, (local[:, None, None].expand(B, L, 1), self._kv_index, index_slot), None, local
        # other scatters: write into the whole storage, gather the rows for attention
        rows = torch.tensor(srows + [self.rows] * (width - B), dtype=torch.long, device=dev)
        return self._k, self._v, (rows[:, None, None].expand(width, L, 1), self._kv_index, index_slot), rows, None

    def _range_views(self, first: int, width: int) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Per layer, views of storage rows ``first .. first + width - 1`` (cached), and ``arange(width)``."""
        views = self._views.get((first, width))
        if views is None:
            views = self._views[(first, width)] = ([k[first:first + width] for k in self._k],
                                                   [v[first:first + width] for v in self._v],
                                                   torch.arange(width, device=self.device))
        return views

    def commit(self, plan: SlotPlan) -> None:
        """Advance each written row's length to the plan's end (``max(old, last written + 1)``)."""
        for r, e in zip(plan.rows, plan.ends):
            if r < self.rows and e > self.lengths[r]:
                self.lengths[r] = e

    # ------------------------------------------------------------------ whole-call helpers
    def read(self, rows: list[int], length: int | None = None, layer: int | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather the first ``length`` slots of ``rows`` (inspection and tests; forwards attend in place).

        Returns ``[B, layers, KV, length, d]`` (or ``[B, KV, length, d]`` for one ``layer``);
        slots beyond a row's own length hold stale data (see :meth:`prefix_mask`).
        """
        if length is None:
            length = max((self.lengths[r] for r in rows), default=0)
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)  # [B]
        if layer is None:
            return (torch.stack([k[idx, :, :length] for k in self._k], 1),
                    torch.stack([v[idx, :, :length] for v in self._v], 1))  # [B, layers, KV, P, d]
        return self._k[layer][idx, :, :length], self._v[layer][idx, :, :length]  # [B, KV, P, d]

    def prefix_mask(self, rows: list[int], length: int) -> torch.Tensor:
        """``[B, length]`` bool: slot ``j`` is inside row ``rows[b]``'s valid prefix."""
        lens = torch.tensor([self.lengths[r] for r in rows], device=self.device)  # [B]
        return torch.arange(length, device=self.device)[None, :] < lens[:, None]

    def write(self, rows: list[int], positions: torch.Tensor, write: torch.Tensor,
              k: torch.Tensor, v: torch.Tensor) -> None:
        """Store K/V ``[B, L, layers, KV, d]`` of the tokens selected by ``write`` at their positions.

        Each row's length becomes ``max(old, max written position + 1)``.

        Raises
        ------
        ValueError
            A written position is outside ``[0, capacity)``.
        """
        plan = self.plan(rows, positions, write)
        for layer in range(self.layers):
            plan.k[layer].index_put_(plan.index, k[:, :, layer].to(plan.k[layer].dtype))
            plan.v[layer].index_put_(plan.index, v[:, :, layer].to(plan.v[layer].dtype))
        self.commit(plan)


__all__ = ["RowKVCache", "SlotPlan"]


def _lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A zeroed storage tensor. On the CPU it is an anonymous memory map: its pages are the kernel's
    zero pages until first written (``torch.zeros`` writes every byte), so a row costs resident memory
    only for the slots it fills, not for its whole capacity.

    The map is advised against transparent huge pages. Each (row, head) of a layer is one contiguous
    ``slots x head_dim`` run (2 MiB for SmolLM2 at 8,192 slots), so with huge pages the first token
    written to a row would make the whole run resident: about 375 MiB per SmolLM2 row instead of the
    few pages its tokens fill. (numpy's own allocator asks for huge pages on large arrays.)
    """
    if torch.device(device).type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if nbytes == 0:
        return torch.zeros(shape, dtype=dtype)
    region = mmap.mmap(-1, nbytes)  # anonymous, zero-filled on first touch; freed with the tensor
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # Linux; elsewhere pages are small already
        region.madvise(mmap.MADV_NOHUGEPAGE)
    return torch.frombuffer(region, dtype=dtype).view(shape)
