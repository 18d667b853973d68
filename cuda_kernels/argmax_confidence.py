"""Row argmax + confidence: the greedy candidate of each row and its softmax probability.

Kernels: :func:`argmax_confidence` (greedy candidates, ``T = 0``) and
:func:`confidence` (the probability of given tokens, e.g. Gumbel-max samples at
``T > 0``: confidence is always taken without temperature or noise).

Equivalences with the references (float64 semantics of :mod:`graphrt.sampling`):

* tokens: **bitwise** equal to :func:`graphrt.sampling.argmax_lowest` (lowest
  index among ties, NaN counts as ``-inf``, an all ``-inf``/NaN row gives 0);
* confidence: equal to :func:`graphrt.sampling.confidence` up to float64
  rounding (one-pass online softmax, reduction order differs from torch's; the
  tests use ``rtol = 1e-12``); exactly 0 where the reference gives NaN -> 0
  (a row whose max is ``+inf`` or that is all ``-inf``/NaN); a token outside
  ``[0, V)`` gets confidence 0 instead of an index error.

>>> logits = torch.tensor([[0.0, 2.0, 2.0], [float("nan"), float("-inf"), float("-inf")]])
>>> tokens, conf = argmax_confidence_reference(logits)
>>> tokens.tolist(), [round(c, 3) for c in conf.tolist()]
([1, 0], [0.468, 0.0])
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from graphrt.cuda_kernels import _launch
from graphrt.cuda_kernels._launch import StreamLike

__all__ = ["argmax_confidence", "argmax_confidence_reference", "confidence", "confidence_reference"]


@functools.cache
def _jit():
    _launch.device_module()
    from graphrt.cuda_kernels import _argmax_confidence_jit

    return _argmax_confidence_jit


def argmax_confidence(
    logits: torch.Tensor,
    *,
    out_tokens: torch.Tensor | None = None,
    out_conf: torch.Tensor | None = None,
    stream: StreamLike = None,
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens and their confidence for every row of ``logits [..., V]`` (kernel).

    Parameters
    ----------
    logits:
        ``[..., V]`` float16/bfloat16/float32/float64, CUDA (or CPU in the simulator).
    out_tokens, out_conf:
        Optional preallocated outputs ``[...]`` (int64; float32 or float64),
        written in place; allocated when ``None``.
    stream:
        Stream to launch on (torch's current stream when ``None``).
    threads:
        Threads per block (one block per row).

    Returns
    -------
    (tokens, conf):
        ``tokens [...]`` int64 and ``conf [...]`` (float64 unless ``out_conf`` says otherwise).
    """
    where = "argmax_confidence"
    backend = _launch.backend_for(logits, where)
    rows2d, _ = _launch.logits_2d(logits, where)  # [R, V]
    lead = tuple(logits.shape[:-1])
    tokens = _launch.out_tensor(out_tokens, lead, torch.int64, logits.device, "out_tokens", where)
    conf_dtype = out_conf.dtype if out_conf is not None else torch.float64
    if conf_dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{where}: expected out_conf float32 or float64, found {conf_dtype}")
    conf = _launch.out_tensor(out_conf, lead, conf_dtype, logits.device, "out_conf", where)
    block = _launch.row_threads(rows2d.shape[1], backend, threads, where)
    args = [_launch.as_kernel_array(t, backend) for t in (rows2d, tokens.view(-1), conf.view(-1))]
    _launch.launch(_jit().argmax_confidence_kernel, rows2d.shape[0], block, backend, stream, logits.device, args)
    return tokens, conf


def argmax_confidence_reference(
    logits: torch.Tensor,
    *,
    out_tokens: torch.Tensor | None = None,
    out_conf: torch.Tensor | None = None,
    stream: StreamLike = None,
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of :func:`argmax_confidence` (``stream`` and ``threads`` are ignored).

    ``tokens = sampling.argmax_lowest(logits)``, ``conf = sampling.confidence(logits, tokens)``.
    """
    tokens = _launch.reference("argmax")(logits)  # [...]
    conf = _launch.reference("confidence")(logits, tokens)  # [...] float64
    return _fill(out_tokens, tokens), _fill(out_conf, conf)


def confidence(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    stream: StreamLike = None,
    threads: int | None = None,
) -> torch.Tensor:
    """Softmax probability (temperature 1, no noise) of ``tokens [...]`` under ``logits [..., V]`` (kernel).

    Parameters
    ----------
    logits:
        ``[..., V]`` float logits.
    tokens:
        ``[...]`` integer token ids; ids outside ``[0, V)`` get confidence 0.
    out:
        Optional preallocated ``[...]`` float32/float64 output.
    stream, threads:
        As in :func:`argmax_confidence`.

    Returns
    -------
    torch.Tensor
        ``[...]`` confidences (float64 unless ``out`` says otherwise).
    """
    where = "confidence"
    backend = _launch.backend_for(logits, where)
    _launch.check_same_device(where, logits, tokens=tokens)
    rows2d, _ = _launch.logits_2d(logits, where)  # [R, V]
    lead = tuple(logits.shape[:-1])
    if tuple(tokens.shape) != lead:
        raise ValueError(f"{where}: expected tokens of shape {lead} (logits' leading dims), found {tuple(tokens.shape)}")
    conf = _launch.out_tensor(out, lead, out.dtype if out is not None else torch.float64, logits.device, "out", where)
    block = _launch.row_threads(rows2d.shape[1], backend, threads, where)
    args = [_launch.as_kernel_array(t, backend)
            for t in (rows2d, tokens.reshape(-1).contiguous(), conf.view(-1))]
    _launch.launch(_jit().confidence_kernel, rows2d.shape[0], block, backend, stream, logits.device, args)
    return conf


def confidence_reference(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    stream: StreamLike = None,
    threads: int | None = None,
) -> torch.Tensor:
    """Torch reference of :func:`confidence`: :func:`graphrt.sampling.confidence`, 0 for out-of-range ids."""
    width = logits.shape[-1]
    valid = (tokens >= 0) & (tokens < width)  # [...]
    conf = _launch.reference("confidence")(logits, torch.where(valid, tokens, torch.zeros_like(tokens)).to(torch.int64))
    return _fill(out, torch.where(valid, conf, torch.zeros_like(conf)))


def _fill(out: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    if out is None:
        return value
    out.copy_(value)
    return out


def _op_confidence() -> Any:
    def confidence_op(logits, tokens):  # type: ignore[no-untyped-def]
        lead = tokens.shape
        out = confidence(logits.reshape(1, -1, logits.shape[-1]).contiguous(), tokens.reshape(1, -1))
        return out.reshape(lead)
    return confidence_op


_launch.register_kernel("confidence", _op_confidence)
