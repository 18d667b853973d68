"""Cache length bookkeeping: commit (set) or advance (add) the per-row lengths of a KV cache.

``lengths [N]`` holds the number of valid cache positions of each cache row;
:func:`commit` writes ``lengths[rows[u]] = values[u]`` (e.g. the verify-accept
``start + k + 1``: a crop back to the accepted prefix) or, with
``mode="add"``, ``lengths[rows[u]] += values[u]``; results are clamped to
``[0, capacity]``. Rows outside ``[0, N)`` are skipped (never an out-of-bounds
write). A row named several times: ``set`` keeps the last value, ``add`` adds
the sum of its values (then clamps once).

Equivalence: **bitwise** equal to :func:`commit_reference` (integer-only).

>>> lengths = torch.tensor([4, 4, 4])
>>> commit_reference(lengths, torch.tensor([9, 2]), rows=torch.tensor([2, 0])).tolist()
[2, 4, 9]
"""

from __future__ import annotations

import functools

import torch

from graphrt.cuda_kernels import _launch
from graphrt.cuda_kernels._launch import StreamLike

__all__ = ["commit", "commit_reference"]

_MODES = {"set": 0, "add": 1}


@functools.cache
def _jit():
    _launch.device_module()
    from graphrt.cuda_kernels import _commit_jit

    return _commit_jit


def _updates(lengths: torch.Tensor, values: int | torch.Tensor, rows: torch.Tensor | None, mode: str,
             where: str) -> int:
    if lengths.dim() != 1 or lengths.dtype != torch.int64:
        raise ValueError(f"{where}: expected lengths [N] int64, found shape {tuple(lengths.shape)}, {lengths.dtype}")
    if mode not in _MODES:
        raise ValueError(f"{where}: expected mode 'set' or 'add', found {mode!r}")
    if rows is not None:
        if rows.dim() != 1:
            raise ValueError(f"{where}: expected rows [U], found shape {tuple(rows.shape)}")
        return rows.shape[0]
    if isinstance(values, torch.Tensor) and values.dim() == 1:
        return values.shape[0]
    return lengths.shape[0]


def commit(
    lengths: torch.Tensor,
    values: int | torch.Tensor,
    *,
    rows: torch.Tensor | None = None,
    mode: str = "set",
    capacity: int | None = None,
    stream: StreamLike = None,
    threads: int | None = None,
) -> torch.Tensor:
    """Update ``lengths [N]`` in place (kernel; see the module docstring).

    Parameters
    ----------
    lengths:
        ``[N]`` int64 cache lengths, one per cache row (contiguous).
    values:
        Scalar or ``[U]`` new lengths (``set``) or increments (``add``).
    rows:
        ``[U]`` integer cache rows to update; ``None`` updates rows ``0..U-1``
        (``U = len(values)``, or ``N`` for a scalar).
    mode:
        ``"set"`` or ``"add"``.
    capacity:
        Upper clamp (the rows' allocated positions); ``None`` for none. The lower clamp is 0.
    stream, threads:
        CUDA stream (torch's current when ``None``) and threads per block (one thread per update).

    Returns
    -------
    torch.Tensor
        ``lengths`` (the same tensor).
    """
    where = "commit"
    backend = _launch.backend_for(lengths, where)
    updates = _updates(lengths, values, rows, mode, where)
    _launch.check_same_device(where, lengths, rows=rows, values=values if isinstance(values, torch.Tensor) else None)
    if not lengths.is_contiguous():
        raise ValueError(f"{where}: expected contiguous lengths (updated in place)")
    device = lengths.device
    vals = _launch.row_param(values, updates, updates, "values", where, torch.int64, device, backend)
    rows_arr = rows.to(torch.int64).contiguous() if rows is not None else _launch._dummy(str(device), torch.int64)
    args = [_launch.as_kernel_array(lengths, backend), _launch.as_kernel_array(rows_arr, backend),
            rows is not None, updates, *vals, _MODES[mode], -1 if capacity is None else int(capacity)]
    tpb = threads or (32 if backend == "sim" else 128)
    _launch.launch(_jit().commit_kernel, (updates + tpb - 1) // tpb, tpb, backend, stream, device, args)
    return lengths


def commit_reference(
    lengths: torch.Tensor,
    values: int | torch.Tensor,
    *,
    rows: torch.Tensor | None = None,
    mode: str = "set",
    capacity: int | None = None,
    stream: StreamLike = None,
    threads: int | None = None,
) -> torch.Tensor:
    """Torch reference of :func:`commit` (a loop over the updates, in place)."""
    updates = _updates(lengths, values, rows, mode, "commit_reference")
    n = lengths.shape[0]
    staged: dict[int, int] = {}
    for u in range(updates):
        row = int(rows[u]) if rows is not None else u
        if not 0 <= row < n:
            continue
        value = int(_launch.scalar_or_row(values, u)) if isinstance(values, torch.Tensor) and values.dim() == 1 \
            else int(values)
        staged[row] = value if mode == "set" or row not in staged else staged[row] + value
    for row, value in staged.items():
        new = value if mode == "set" else int(lengths[row]) + value
        new = max(new, 0)
        if capacity is not None:
            new = min(new, capacity)
        lengths[row] = new
    return lengths
