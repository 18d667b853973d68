"""The one place that maps a fused op to its implementation for a device.

``get_impl(op_name, device)`` returns the Numba kernel launcher for CUDA
devices and the torch reference for CPU; both have the same signature and
the same in-place/return conventions, so the executor calls the result
without knowing which it got. Nothing is imported until asked for: the CPU
path never imports numba.

| op name             | kernel launcher (CUDA)                 | torch reference (CPU)                     |
|---------------------|----------------------------------------|-------------------------------------------|
| ``sample``          | :func:`.sample.sample`                 | :func:`.sample.sample_reference`          |
| ``argmax_confidence`` | :func:`.argmax_confidence.argmax_confidence` | :func:`.argmax_confidence.argmax_confidence_reference` |
| ``confidence``      | :func:`.argmax_confidence.confidence`  | :func:`.argmax_confidence.confidence_reference` |
| ``denoise_select``  | :func:`.denoise_select.denoise_select` | :func:`.denoise_select.denoise_select_reference` |
| ``verify_accept``   | :func:`.verify_accept.verify_accept`   | :func:`.verify_accept.verify_accept_reference` |
| ``commit``          | :func:`.commit.commit`                 | :func:`.commit.commit_reference`          |

>>> get_impl("verify_accept", "cpu").__name__
'verify_accept_reference'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["OPS", "get_impl", "op_names"]

OPS: dict[str, tuple[str, str, str]] = {
    # op name: (module, kernel launcher, torch reference)
    "sample": ("sample", "sample", "sample_reference"),
    "argmax_confidence": ("argmax_confidence", "argmax_confidence", "argmax_confidence_reference"),
    "confidence": ("argmax_confidence", "confidence", "confidence_reference"),
    "denoise_select": ("denoise_select", "denoise_select", "denoise_select_reference"),
    "verify_accept": ("verify_accept", "verify_accept", "verify_accept_reference"),
    "commit": ("commit", "commit", "commit_reference"),
}


def op_names() -> list[str]:
    """The op names :func:`get_impl` knows."""
    return sorted(OPS)


def get_impl(op_name: str, device: str | torch.device, *, simulator: bool = False) -> Callable[..., Any]:
    """The implementation of ``op_name`` for tensors on ``device``.

    Parameters
    ----------
    op_name:
        One of :func:`op_names` (``"sample"``, ``"denoise_select"``, ``"verify_accept"``,
        ``"argmax_confidence"``, ``"confidence"``, ``"commit"``).
    device:
        ``"cpu"``/``"cuda"``/``"cuda:N"`` or a ``torch.device``.
    simulator:
        For a CPU device, return the kernel launcher anyway (it then runs in
        Numba's CUDA simulator, which must be enabled); for tests.

    Returns
    -------
    Callable
        The kernel launcher (CUDA) or the torch reference (CPU).

    Raises
    ------
    KeyError
        Unknown op name (the message lists the known ones).
    RuntimeError
        A CUDA device was asked for on a machine without one.
    """
    if op_name not in OPS:
        raise KeyError(f"get_impl: unknown op {op_name!r}; expected one of {op_names()}")
    module_name, kernel_name, reference_name = OPS[op_name]
    dev = torch.device(device)
    if dev.type == "cuda":
        from graphrt.cuda_kernels.streams import require_cuda

        require_cuda(f"get_impl({op_name!r}, {str(dev)!r})")
        name = kernel_name
    elif dev.type == "cpu":
        name = kernel_name if simulator else reference_name
    else:
        raise ValueError(f"get_impl: expected a cpu or cuda device, found {dev}")
    module = importlib.import_module(f"graphrt.cuda_kernels.{module_name}")
    return getattr(module, name)
