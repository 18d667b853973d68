"""The counter-based noise of :mod:`graphrt.noise`, computed by a kernel.

:func:`uniform` evaluates the same hash as the sampling kernel's device
functions (``_device.position_key`` / ``_device.uniform_at``); it exists so the
device hash can be checked against the reference on its own.

Equivalence: **bitwise** equal to :func:`graphrt.noise.uniform` (the 32-bit
hash words are reproduced exactly in ``uint64`` arithmetic and
``(h + 0.5) / 2**32`` is exact in float64).
"""

from __future__ import annotations

import functools

import torch

from graphrt import noise as ref_noise
from graphrt.cuda_kernels import _launch
from graphrt.cuda_kernels._launch import StreamLike

__all__ = ["uniform", "uniform_reference"]


@functools.cache
def _jit():
    _launch.device_module()
    from graphrt.cuda_kernels import _noise_jit

    return _noise_jit


def uniform(
    seed: int,
    noise_stream: int,
    positions: torch.Tensor,
    purpose: int,
    width: int,
    *,
    out: torch.Tensor | None = None,
    stream: StreamLike = None,
    threads: int | None = None,
) -> torch.Tensor:
    """Uniforms in (0, 1), float64 ``[N, width]``, for ``positions [N]`` (kernel).

    Parameters
    ----------
    seed, noise_stream, purpose:
        As in :func:`graphrt.noise.uniform` (Python ints).
    positions:
        ``[N]`` integer absolute positions.
    width:
        Draws per position (the vocabulary size).
    out:
        Optional preallocated ``[N, width]`` float64 output.
    stream, threads:
        CUDA stream (torch's current when ``None``) and threads per block.

    Returns
    -------
    torch.Tensor
        ``[N, width]`` float64, bitwise equal to the reference.
    """
    where = "uniform"
    backend = _launch.backend_for(positions, where)
    if positions.dim() != 1:
        raise ValueError(f"{where}: expected positions [N], found shape {tuple(positions.shape)}")
    out = _launch.out_tensor(out, (positions.shape[0], width), torch.float64, positions.device, "out", where)
    block = threads or (32 if backend == "sim" else 256)
    total = positions.shape[0] * width
    m = ref_noise.MASK32
    args = [_launch.as_kernel_array(positions.to(torch.int64).contiguous(), backend),
            _launch.as_kernel_array(out, backend),
            seed & m, (seed >> 32) & m, noise_stream & m, purpose & m]
    _launch.launch(_jit().uniform_kernel, (total + block - 1) // block, block, backend, stream,
                   positions.device, args)
    return out


def uniform_reference(
    seed: int,
    noise_stream: int,
    positions: torch.Tensor,
    purpose: int,
    width: int,
    *,
    out: torch.Tensor | None = None,
    stream: StreamLike = None,
    threads: int | None = None,
) -> torch.Tensor:
    """Torch reference of :func:`uniform`: :func:`graphrt.noise.uniform`."""
    u = ref_noise.uniform(seed, noise_stream, positions.to(torch.int64), purpose, width)  # [N, W]
    if out is None:
        return u
    out.copy_(u)
    return out
