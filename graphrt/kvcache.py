"""A row-indexed KV cache allocated once, up front.

Storage is one K and one V tensor ``[rows, layers, kv_heads, capacity, head_dim]``
(plus one scratch slot per row, see below) and a host-side length per row. A row
belongs to one request; rows advance by different amounts each round.

Writes are scatter writes at absolute positions: token ``i`` of batch row ``b``
with ``write[b, i]`` stores its K/V at slot ``positions[b, i]`` of its row. Tokens
that do not write are redirected to a scratch slot (index ``capacity``), so a
write is one ``index_put_`` with no data-dependent shapes on the device.
"""

from __future__ import annotations

import torch


class RowKVCache:
    """K/V storage for ``rows`` requests of up to ``capacity`` positions each.

    Parameters
    ----------
    rows, layers, kv_heads, capacity, head_dim:
        Storage shape ``[rows, layers, kv_heads, capacity, head_dim]``.
    dtype, device:
        Of the storage.

    Attributes
    ----------
    k, v:
        ``[rows, layers, kv_heads, capacity, head_dim]`` views of the storage.
    lengths:
        ``list[int]``, the valid cached length of every row (host side).
    """

    def __init__(self, rows: int, layers: int, kv_heads: int, capacity: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        if min(rows, layers, kv_heads, capacity, head_dim) <= 0:
            raise ValueError(f"RowKVCache: expected positive sizes, found rows={rows}, layers={layers}, "
                             f"kv_heads={kv_heads}, capacity={capacity}, head_dim={head_dim}")
        self.rows, self.layers, self.kv_heads = rows, layers, kv_heads
        self.capacity, self.head_dim = capacity, head_dim
        shape = (rows, layers, kv_heads, capacity + 1, head_dim)  # +1: scratch slot for non-writes
        self._k = torch.zeros(shape, dtype=dtype, device=device)
        self._v = torch.zeros(shape, dtype=dtype, device=device)
        self.k = self._k[:, :, :, :capacity]  # [rows, layers, KV, C, d]
        self.v = self._v[:, :, :, :capacity]
        self.lengths: list[int] = [0] * rows
        self._free: list[int] = list(range(rows))
        self._allocated: set[int] = set()

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

    # ------------------------------------------------------------------ data
    def read(self, rows: list[int], length: int | None = None, layer: int | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather the first ``length`` slots of ``rows``.

        Parameters
        ----------
        rows:
            ``B`` row ids.
        length:
            Slots to read (default: the longest of the rows' lengths).
        layer:
            One layer (returns ``[B, KV, length, d]``) or all (``[B, layers, KV, length, d]``).

        Returns
        -------
        (k, v)
            Slots beyond a row's own length hold stale data: mask them by
            :meth:`prefix_mask`.
        """
        if length is None:
            length = max((self.lengths[r] for r in rows), default=0)
        idx = torch.tensor(rows, dtype=torch.long, device=self._k.device)  # [B]
        if layer is None:
            return self._k[idx, :, :, :length], self._v[idx, :, :, :length]  # [B, layers, KV, P, d]
        return self._k[idx, layer, :, :length], self._v[idx, layer, :, :length]  # [B, KV, P, d]

    def prefix_mask(self, rows: list[int], length: int) -> torch.Tensor:
        """``[B, length]`` bool: slot ``j`` is inside row ``rows[b]``'s valid prefix."""
        lens = torch.tensor([self.lengths[r] for r in rows], device=self._k.device)  # [B]
        return torch.arange(length, device=self._k.device)[None, :] < lens[:, None]

    def write(self, rows: list[int], positions: torch.Tensor, write: torch.Tensor,
              k: torch.Tensor, v: torch.Tensor) -> None:
        """Store K/V of the tokens selected by ``write`` at their positions.

        Parameters
        ----------
        rows:
            ``B`` row ids (all in range).
        positions:
            ``[B, L]`` int64 absolute positions = cache slots.
        write:
            ``[B, L]`` bool, which tokens write.
        k, v:
            ``[B, L, layers, KV, d]``.

        Each row's length becomes ``max(old, max written position + 1)``. When
        ``positions``/``write`` live on the device, updating the host lengths costs
        one device-to-host copy; pass host tensors to avoid it.

        Raises
        ------
        ValueError
            A written position is outside ``[0, capacity)``.
        """
        pos_h = positions.detach().to("cpu", torch.long)
        write_h = write.detach().to("cpu", torch.bool)
        ends = torch.where(write_h, pos_h + 1, 0).amax(dim=1).tolist() if pos_h.numel() else [0] * len(rows)
        if write_h.any():
            lo, hi = int(pos_h[write_h].min()), int(pos_h[write_h].max())
            if lo < 0 or hi >= self.capacity:
                raise ValueError(f"KV cache write: positions expected in [0, {self.capacity}) (row capacity), "
                                 f"found [{lo}, {hi}] in rows {rows}")
        else:
            return
        dev = self._k.device
        row_idx = torch.tensor(rows, dtype=torch.long, device=dev)[:, None].expand_as(pos_h)  # [B, L]
        slot = torch.where(write.to(dev), positions.to(dev), self.capacity)  # [B, L]
        self._k[row_idx, :, :, slot] = k.to(self._k.dtype)  # advanced dims first: [B, L, layers, KV, d]
        self._v[row_idx, :, :, slot] = v.to(self._v.dtype)
        for r, e in zip(rows, ends):
            if e > self.lengths[r]:
                self.lengths[r] = e


__all__ = ["RowKVCache"]
