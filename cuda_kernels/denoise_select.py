"""Denoise-select: commit candidate tokens into the masked slots of each block row.

With a ``threshold``: the most confident masked slot (lowest position on ties)
is always committed (forced progress), plus every masked slot whose
confidence is ``>= threshold``. With ``threshold=None``: the ``count`` most
confident masked slots (the count schedule, see :func:`schedule_count`).
Unmasked slots never change; a row with no mask is unchanged. The block is
updated in place.

Equivalence: **bitwise** equal to :func:`denoise_select_reference`, a loop of
:func:`graphrt.sampling.denoise_select` over rows, for the same ``conf``
(integer results from exact float64 comparisons; the count mode reproduces the
stable descending ``torch.sort`` including its NaN-first order). Together with
:func:`graphrt.cuda_kernels.argmax_confidence.argmax_confidence` the chain can
differ from the reference chain only when a confidence is within float64
rounding of ``threshold`` or of another masked slot's confidence.

>>> block = torch.tensor([[5, 9, 9, 9]])                   # mask id 9
>>> cand = torch.tensor([[0, 1, 2, 3]]); conf = torch.tensor([[0.0, 0.2, 0.95, 0.5]])
>>> denoise_select_reference(block, cand, conf, mask_token_id=9, threshold=0.9)[0].tolist()
[[5, 9, 2, 9]]
>>> denoise_select_reference(block, cand, conf, mask_token_id=9, threshold=None, count=2)[0].tolist()
[[5, 9, 2, 3]]
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from graphrt.cuda_kernels import _launch
from graphrt.cuda_kernels._launch import StreamLike

__all__ = ["denoise_select", "denoise_select_reference", "schedule_count"]

MAX_LEN = 4096
"""Longest block row the kernel accepts."""


@functools.cache
def _jit():
    _launch.device_module()
    from graphrt.cuda_kernels import _denoise_select_jit

    return _denoise_select_jit


def schedule_count(num_masked: int | torch.Tensor, steps: int | torch.Tensor,
                   step: int | torch.Tensor) -> int | torch.Tensor:
    """Slots to commit at denoise ``step`` (0-based) when ``num_masked`` masks are split evenly
    over ``steps`` steps, remainder first (docs/design.md's ``threshold=None`` schedule).

    Works elementwise on ints or integer tensors (no host sync).

    >>> [schedule_count(7, 3, s) for s in range(3)]
    [3, 2, 2]
    """
    base = num_masked // steps
    extra = (step < num_masked % steps)
    if isinstance(extra, torch.Tensor):
        return base + extra.to(torch.as_tensor(base).dtype)
    return base + int(extra)


def _check(block: torch.Tensor, candidates: torch.Tensor, conf: torch.Tensor, where: str) -> None:
    if block.dim() != 2:
        raise ValueError(f"{where}: expected block [B, L], found shape {tuple(block.shape)}")
    for name, t in (("candidates", candidates), ("conf", conf)):
        if tuple(t.shape) != tuple(block.shape):
            raise ValueError(f"{where}: expected {name} of shape {tuple(block.shape)} (block's), "
                             f"found {tuple(t.shape)}")
    if block.dtype.is_floating_point or candidates.dtype.is_floating_point:
        raise TypeError(f"{where}: expected integer block and candidates, found {block.dtype}, {candidates.dtype}")


def denoise_select(
    block: torch.Tensor,
    candidates: torch.Tensor,
    conf: torch.Tensor,
    *,
    mask_token_id: int,
    threshold: float | torch.Tensor | None,
    count: int | torch.Tensor = 1,
    out_remaining: torch.Tensor | None = None,
    stream: StreamLike = None,
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Commit ``candidates`` into ``block`` in place (kernel; see the module docstring).

    Parameters
    ----------
    block:
        ``[B, L]`` integer tokens, ``mask_token_id`` marks undecided slots; updated in place
        (must be contiguous).
    candidates:
        ``[B, L]`` integer candidate tokens (e.g. argmax or Gumbel-max samples).
    conf:
        ``[B, L]`` float32/float64 confidences of the candidates.
    mask_token_id:
        The mask token id.
    threshold:
        Scalar or ``[B]`` confidence threshold, or ``None`` for the count mode.
    count:
        Scalar or ``[B]`` number of slots to commit in the count mode (``<= 0`` or
        ``>= L`` commits every masked slot, as the reference does).
    out_remaining:
        Optional ``[B]`` int64 tensor that receives the number of masks left per row
        (lets a loop test "done" without a host sync).
    stream, threads:
        CUDA stream (torch's current when ``None``) and threads per block (one block per row).

    Returns
    -------
    (block, remaining):
        The updated ``block`` (the same tensor) and ``out_remaining`` (``None`` if not given).
    """
    where = "denoise_select"
    backend = _launch.backend_for(block, where)
    _check(block, candidates, conf, where)
    _launch.check_same_device(where, block, candidates=candidates, conf=conf, out_remaining=out_remaining)
    if not block.is_contiguous():
        raise ValueError(f"{where}: expected a contiguous block (it is updated in place)")
    batch, length = block.shape
    if length > MAX_LEN:
        raise ValueError(f"{where}: expected block length <= {MAX_LEN}, found {length}")
    if out_remaining is not None:
        _launch.out_tensor(out_remaining, (batch,), torch.int64, block.device, "out_remaining", where)
    remaining = out_remaining if out_remaining is not None else _launch._dummy(str(block.device), torch.int64)
    device = block.device
    thr = _launch.row_param(0.0 if threshold is None else threshold, batch, batch, "threshold", where,
                            torch.float64, device, backend)
    cnt = _launch.row_param(count, batch, batch, "count", where, torch.int64, device, backend)
    cand = candidates if candidates.dtype == block.dtype else candidates.to(block.dtype)
    args = [_launch.as_kernel_array(block, backend),
            _launch.as_kernel_array(cand.contiguous(), backend),
            _launch.as_kernel_array(conf.contiguous(), backend),
            int(mask_token_id), threshold is None, *thr, *cnt,
            _launch.as_kernel_array(remaining, backend), out_remaining is not None]
    if backend == "gpu":
        block_threads = threads or min(1024, max(32, 32 * ((length + 31) // 32)))
    else:
        block_threads = threads or min(32, max(1, length))
    block_threads = _launch.row_threads(length, backend, block_threads, where)
    _launch.launch(_jit().denoise_select_kernel, batch, block_threads, backend, stream, device, args)
    return block, out_remaining


def denoise_select_reference(
    block: torch.Tensor,
    candidates: torch.Tensor,
    conf: torch.Tensor,
    *,
    mask_token_id: int,
    threshold: float | torch.Tensor | None,
    count: int | torch.Tensor = 1,
    out_remaining: torch.Tensor | None = None,
    stream: StreamLike = None,
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Torch reference of :func:`denoise_select`: the ``denoise_select`` op's registry reference per row,
    written into ``block`` in place; ``stream`` and ``threads`` are ignored."""
    _check(block, candidates, conf, "denoise_select_reference")
    for b in range(block.shape[0]):
        thr = None if threshold is None else float(_launch.scalar_or_row(threshold, b))
        block[b] = _launch.reference("denoise_select")(block[b], candidates[b].to(block.dtype), conf[b],
                                                       int(_launch.scalar_or_row(count, b)),
                                                       mask_token_id=mask_token_id, threshold=thr)
    if out_remaining is not None:
        out_remaining.copy_((block == mask_token_id).sum(-1))
    return block, out_remaining


def _op_denoise_select() -> Any:
    def denoise_select_op(block, candidates, conf, count=None, *, mask_token_id, threshold):  # type: ignore[no-untyped-def]
        out = block.reshape(1, -1).clone()  # the op is functional; the kernel updates its block in place
        denoise_select(out, candidates.reshape(1, -1), conf.reshape(1, -1), mask_token_id=mask_token_id,
                       threshold=threshold, count=1 if count is None else _launch.row(count))
        return out.reshape(block.shape)
    return denoise_select_op


_launch.register_kernel("denoise_select", _op_denoise_select)
