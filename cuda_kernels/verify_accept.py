"""Verify-accept: longest matching prefix per row, the bonus token and the new cache length.

For each row ``b`` of a verified block ``[B, L]`` (``block[b, 0]`` is the seed,
``block[b, 1:]`` the drafts) and the AR tokens ``ar_tokens [B, L]`` sampled
from the verify forward: ``k = `` the longest run with
``ar_tokens[b, i] == block[b, i + 1]``; the emitted tokens are
``ar_tokens[b, :k + 1]``, the bonus (next seed) is ``ar_tokens[b, k]`` and the
cache keeps ``start[b] + k + 1`` positions.

Equivalence: **bitwise** equal to :func:`verify_accept_reference` (a loop of
:func:`graphrt.sampling.verify_accept`); integer-only.

>>> block = torch.tensor([[7, 1, 2, 3]]); ar = torch.tensor([[1, 2, 9, 4]])
>>> [t.tolist() for t in verify_accept_reference(block, ar, start=10)]
[[2], [9], [13]]
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from graphrt.cuda_kernels import _launch
from graphrt.cuda_kernels._launch import StreamLike

__all__ = ["verify_accept", "verify_accept_reference"]


@functools.cache
def _jit():
    _launch.device_module()
    from graphrt.cuda_kernels import _verify_accept_jit

    return _verify_accept_jit


def _check(block: torch.Tensor, ar_tokens: torch.Tensor, where: str) -> None:
    if block.dim() != 2 or block.shape[1] < 1:
        raise ValueError(f"{where}: expected block [B, L] with L >= 1, found shape {tuple(block.shape)}")
    if tuple(ar_tokens.shape) != tuple(block.shape):
        raise ValueError(f"{where}: expected ar_tokens of shape {tuple(block.shape)} (block's), "
                         f"found {tuple(ar_tokens.shape)}")


def verify_accept(
    block: torch.Tensor,
    ar_tokens: torch.Tensor,
    *,
    start: int | torch.Tensor,
    out_accepted: torch.Tensor | None = None,
    out_bonus: torch.Tensor | None = None,
    out_length: torch.Tensor | None = None,
    stream: StreamLike = None,
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Accepted draft count, bonus token and new cache length per row (kernel).

    Parameters
    ----------
    block:
        ``[B, L]`` integer verified block (seed + drafts).
    ar_tokens:
        ``[B, L]`` integer AR tokens from the verify forward.
    start:
        Scalar or ``[B]`` cache length before the block (the seed's position).
    out_accepted, out_bonus, out_length:
        Optional preallocated ``[B]`` int64 outputs.
    stream, threads:
        CUDA stream (torch's current when ``None``) and threads per block (one thread per row).

    Returns
    -------
    (accepted, bonus, new_length):
        ``[B]`` int64 each: ``k``, ``ar_tokens[b, k]`` and ``start + k + 1``.
    """
    where = "verify_accept"
    backend = _launch.backend_for(block, where)
    _check(block, ar_tokens, where)
    _launch.check_same_device(where, block, ar_tokens=ar_tokens)
    batch, device = block.shape[0], block.device
    outs = [_launch.out_tensor(o, (batch,), torch.int64, device, n, where)
            for o, n in ((out_accepted, "out_accepted"), (out_bonus, "out_bonus"), (out_length, "out_length"))]
    st = _launch.row_param(start, batch, batch, "start", where, torch.int64, device, backend)
    args = [_launch.as_kernel_array(block.contiguous(), backend),
            _launch.as_kernel_array(ar_tokens.contiguous(), backend), *st,
            *[_launch.as_kernel_array(o, backend) for o in outs]]
    tpb = threads or (32 if backend == "sim" else 128)
    _launch.launch(_jit().verify_accept_kernel, (batch + tpb - 1) // tpb, tpb, backend, stream, device, args)
    return outs[0], outs[1], outs[2]


def verify_accept_reference(
    block: torch.Tensor,
    ar_tokens: torch.Tensor,
    *,
    start: int | torch.Tensor,
    out_accepted: torch.Tensor | None = None,
    out_bonus: torch.Tensor | None = None,
    out_length: torch.Tensor | None = None,
    stream: StreamLike = None,
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch reference of :func:`verify_accept`:  the ``verify_accept`` op's registry reference per row."""
    _check(block, ar_tokens, "verify_accept_reference")
    accepted = torch.stack([_launch.reference("verify_accept")(block[b], ar_tokens[b]) for b in range(block.shape[0])]) \
        if block.shape[0] else torch.zeros(0, dtype=torch.int64)
    bonus = ar_tokens.to(torch.int64).gather(1, accepted.unsqueeze(1)).squeeze(1)  # [B]
    start_t = start if isinstance(start, torch.Tensor) else torch.full_like(accepted, int(start))
    new_length = start_t.to(torch.int64) + accepted + 1
    results = []
    for out, value in ((out_accepted, accepted), (out_bonus, bonus), (out_length, new_length)):
        if out is None:
            results.append(value)
        else:
            out.copy_(value)
            results.append(out)
    return results[0], results[1], results[2]


def _op_verify_accept() -> Any:
    def verify_accept_op(block, ar_tokens):  # type: ignore[no-untyped-def]
        accepted, _, _ = verify_accept(block.reshape(1, -1), ar_tokens.reshape(1, -1), start=0)
        return accepted.reshape(())
    return verify_accept_op


_launch.register_kernel("verify_accept", _op_verify_accept)
