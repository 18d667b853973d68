"""Sampling with temperature, top-k and top-p by Gumbel-max on counter-based noise.

:func:`sample` draws one token per row of ``logits [B, ..., V]``: greedy
(lowest-index argmax) where ``temperature <= 0``, else
``argmax(filter(logits / T) + g)`` with ``g`` the Gumbel noise of
:mod:`graphrt.noise` keyed by ``(seed, noise_stream, position, purpose, index)``.
The filters use no sort of the vocabulary (bisection on order keys, see
``_sample_jit``), one thread block per row.

Equivalences with :func:`sample_reference` (a loop over
:func:`graphrt.sampling.sample`):

* ``temperature <= 0``: tokens **bitwise** equal (same float64 comparisons);
* the noise: the 32-bit hash words and the uniforms ``u = (h + 0.5) / 2**32``
  are **bitwise** equal (checked by ``tests/test_kernels_sample.py`` through
  :func:`graphrt.cuda_kernels.noise.uniform`); the Gumbel values
  ``-log(-log u)`` agree to about 1 ulp (device ``log`` vs torch's);
* the top-k survivor set is **bitwise** equal (integer counts on exact float64
  comparisons; the tie rule of the stable sort is reproduced);
* the top-p survivor set: inside the tie class at the cut, the same float64
  comparisons ``r * w_c < top_p * W - A`` of :func:`graphrt.sampling.top_p_mask`
  (nothing summed within the class), so equal logits are cut identically; it
  can differ only where the summed weights ``W`` or ``A`` (added in another
  order than torch's ``sum`` / ``cumsum``) put a class boundary within float64
  rounding (about ``V * 2**-53``) of ``top_p * W``. Sums of weights that are
  all 1 or 0 (equal logits, the rest underflowing) are exact in any order;
* hence sampled tokens are equal unless two candidates' ``x + g`` lie within a
  few ulp of each other, or a top-p class boundary is within rounding of ``top_p``.
  In distribution the kernel is exact: Gumbel-max over the survivors samples
  ``softmax`` of the filtered logits, up to the ``2**-32`` resolution of ``u``.

Defined edge cases (as the reference): NaN logits count as ``-inf``; a row that
is all ``-inf`` (after NaN) gives token 0; a row with ``+inf`` gives its
lowest ``+inf`` index; ``top_k <= 0`` or ``>= V`` and ``top_p >= 1`` (or NaN)
disable the filter; ``top_p <= 0`` keeps only the most probable token. The
temperature must be finite (``+inf`` makes ``inf / inf`` NaN; unsupported).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from graphrt import noise
from graphrt.cuda_kernels import _launch
from graphrt.cuda_kernels._launch import StreamLike

__all__ = ["sample", "sample_reference"]

IntParam = int | torch.Tensor
FloatParam = float | torch.Tensor


@functools.cache
def _jit():
    _launch.device_module()
    from graphrt.cuda_kernels import _sample_jit

    return _sample_jit


def _check(logits: torch.Tensor, positions: torch.Tensor, where: str) -> None:
    if logits.dim() < 2:
        raise ValueError(f"{where}: expected logits [B, ..., V], found shape {tuple(logits.shape)}")
    if tuple(positions.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"{where}: expected positions of shape {tuple(logits.shape[:-1])} (logits' leading "
                         f"dims), found {tuple(positions.shape)}")
    if positions.dtype.is_floating_point or positions.dtype == torch.bool:
        raise TypeError(f"{where}: expected integer positions, found {positions.dtype}")


def sample(
    logits: torch.Tensor,
    positions: torch.Tensor,
    *,
    seed: IntParam,
    temperature: FloatParam,
    top_k: IntParam = 0,
    top_p: FloatParam = 1.0,
    noise_stream: IntParam = 0,
    purpose: int = noise.SAMPLE,
    out: torch.Tensor | None = None,
    stream: StreamLike = None,
    threads: int | None = None,
) -> torch.Tensor:
    """Sample one token per row of ``logits [B, ..., V]`` (kernel; see the module docstring).

    Parameters
    ----------
    logits:
        ``[B, ..., V]`` float16/bfloat16/float32/float64 logits.
    positions:
        ``[B, ...]`` integer absolute positions the sampled tokens will occupy (noise keys).
    seed, noise_stream:
        Per request: a Python int or an int64 ``[B]`` tensor (the request's seed
        and noise stream of :mod:`graphrt.noise`).
    temperature, top_k, top_p:
        Per request: a scalar or a ``[B]`` tensor.
    purpose:
        :data:`graphrt.noise.SAMPLE` or :data:`graphrt.noise.DENOISE` (or a user purpose).
    out:
        Optional preallocated ``[B, ...]`` int64 output, written in place.
    stream:
        CUDA stream to launch on (torch's current stream when ``None``).
    threads:
        Threads per block (one block per row).

    Returns
    -------
    torch.Tensor
        ``[B, ...]`` int64 token ids.
    """
    where = "sample"
    backend = _launch.backend_for(logits, where)
    _check(logits, positions, where)
    _launch.check_same_device(where, logits, positions=positions)
    rows2d, shift = _launch.logits_2d(logits, where)  # [R, V]
    lead = tuple(logits.shape[:-1])
    batch, rows, device = lead[0], rows2d.shape[0], logits.device
    tokens = _launch.out_tensor(out, lead, torch.int64, device, "out", where)

    def param(value, name, dtype):
        return _launch.row_param(value, batch, rows, name, where, dtype, device, backend)

    if isinstance(seed, torch.Tensor):  # the kernel splits each int64 seed into two 32-bit words
        seed_arr, _, seed_per = param(seed, "seed", torch.int64)
        seed_args = (seed_arr, 0, 0, seed_per)
    else:  # a Python int of any size: its two low 32-bit words, as graphrt.noise takes them
        seed_arr, _, _ = param(0, "seed", torch.int64)
        seed_args = (seed_arr, seed & noise.MASK32, (seed >> 32) & noise.MASK32, 0)
    args = [
        _launch.as_kernel_array(rows2d, backend),
        _launch.as_kernel_array(positions.reshape(-1).to(torch.int64).contiguous(), backend),
        _launch.as_kernel_array(tokens.view(-1), backend),
        *param(temperature, "temperature", torch.float64),
        *param(top_k, "top_k", torch.int64),
        *param(top_p, "top_p", torch.float64),
        *seed_args,
        *param(noise_stream if not isinstance(noise_stream, int) else noise_stream & noise.MASK32,
               "noise_stream", torch.int64),
        purpose & noise.MASK32,
        shift,
    ]
    block = _launch.row_threads(rows2d.shape[1], backend, threads, where)
    _launch.launch(_jit().sample_kernel, rows, block, backend, stream, device, args)
    return tokens


def sample_reference(
    logits: torch.Tensor,
    positions: torch.Tensor,
    *,
    seed: IntParam,
    temperature: FloatParam,
    top_k: IntParam = 0,
    top_p: FloatParam = 1.0,
    noise_stream: IntParam = 0,
    purpose: int = noise.SAMPLE,
    out: torch.Tensor | None = None,
    stream: StreamLike = None,
    threads: int | None = None,
) -> torch.Tensor:
    """Torch reference of :func:`sample`: the ``sample`` op's registry reference
    (:func:`graphrt.sampling.sample`) per request ``b``.

    ``stream`` and ``threads`` are accepted for signature parity and ignored.
    """
    _check(logits, positions, "sample_reference")
    rows = []
    for b in range(logits.shape[0]):
        rows.append(_launch.reference("sample")(
            logits[b], positions[b].to(torch.int64),
            seed=int(_launch.scalar_or_row(seed, b)),
            stream=int(_launch.scalar_or_row(noise_stream, b)),
            purpose=purpose,
            temperature=float(_launch.scalar_or_row(temperature, b)),
            top_k=int(_launch.scalar_or_row(top_k, b)),
            top_p=float(_launch.scalar_or_row(top_p, b)),
        ))
    tokens = torch.stack(rows) if rows else torch.empty(tuple(logits.shape[:-1]), dtype=torch.int64)
    if out is None:
        return tokens
    out.copy_(tokens)
    return out


def _op_sample() -> Any:
    def sample_op(logits, positions, seed, stream, temperature, top_k, top_p, purpose):  # type: ignore[no-untyped-def]
        lead = positions.shape
        out = sample(logits.reshape(1, -1, logits.shape[-1]).contiguous(), positions.reshape(1, -1),
                     seed=_launch.row(seed), noise_stream=_launch.row(stream), temperature=_launch.row(temperature),
                     top_k=_launch.row(top_k), top_p=_launch.row(top_p), purpose=purpose)
        return out.reshape(lead)
    return sample_op


_launch.register_kernel("sample", _op_sample)
