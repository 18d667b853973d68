"""Registry calling convention -> batched kernel launchers.

The executor calls an op's implementation exactly as it calls the op's torch
reference in :mod:`graphrt.ops`: per request (no batch dimension), scalar
parameters as rank-0 tensors, attributes as keywords, results returned
functionally. The kernels of this package are batched (``[B, ...]``, per-row
parameters as ``[B]`` tensors) and work in place. These adapters bridge the two
for a batch of one without any host synchronisation: scalar parameters travel
as ``[1]`` device tensors, never through ``int()``/``float()``.

:func:`op_impl` is what :func:`graphrt.executor.resolve_impl` asks for CUDA
tensors (or, with ``simulator=True``, for CPU tensors run in Numba's CUDA
simulator: the integration tests run whole policies that way).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from graphrt.cuda_kernels.dispatch import get_impl


def _row(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(1)


def _sample(kernel: Callable[..., Any]) -> Callable[..., torch.Tensor]:
    def sample(logits, positions, seed, stream, temperature, top_k, top_p, purpose):  # type: ignore[no-untyped-def]
        lead = positions.shape
        out = kernel(logits.reshape(1, -1, logits.shape[-1]).contiguous(), positions.reshape(1, -1),
                     seed=_row(seed), noise_stream=_row(stream), temperature=_row(temperature),
                     top_k=_row(top_k), top_p=_row(top_p), purpose=purpose)
        return out.reshape(lead)
    return sample


def _confidence(kernel: Callable[..., Any]) -> Callable[..., torch.Tensor]:
    def confidence(logits, tokens):  # type: ignore[no-untyped-def]
        lead = tokens.shape
        out = kernel(logits.reshape(1, -1, logits.shape[-1]).contiguous(), tokens.reshape(1, -1))
        return out.reshape(lead)
    return confidence


def _denoise_select(kernel: Callable[..., Any]) -> Callable[..., torch.Tensor]:
    def denoise_select(block, candidates, conf, count=None, *, mask_token_id, threshold):  # type: ignore[no-untyped-def]
        out = block.reshape(1, -1).clone()  # the op is functional; the kernel updates its block in place
        kernel(out, candidates.reshape(1, -1), conf.reshape(1, -1), mask_token_id=mask_token_id,
               threshold=threshold, count=1 if count is None else _row(count))
        return out.reshape(block.shape)
    return denoise_select


def _verify_accept(kernel: Callable[..., Any]) -> Callable[..., torch.Tensor]:
    def verify_accept(block, ar_tokens):  # type: ignore[no-untyped-def]
        accepted, _, _ = kernel(block.reshape(1, -1), ar_tokens.reshape(1, -1), start=0)
        return accepted.reshape(())
    return verify_accept


_ADAPTERS: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {
    "sample": _sample,
    "confidence": _confidence,
    "denoise_select": _denoise_select,
    "verify_accept": _verify_accept,
}


def op_impl(op: str, device: torch.device | str, *, simulator: bool = False) -> Callable[..., Any] | None:
    """The kernel-backed implementation of registry op ``op`` for ``device``, or ``None`` if
    this package has no kernel for it (the executor then runs the torch reference)."""
    adapt = _ADAPTERS.get(op)
    if adapt is None:
        return None
    return adapt(get_impl(op, device, simulator=simulator))
