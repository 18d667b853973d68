"""Launch plumbing shared by the kernel launchers (private).

Importing this module does not import numba; :func:`device_module` does, on
the first launch. A launch runs on one of two backends, picked from the
tensors:

* ``"gpu"``: CUDA tensors, passed to Numba through the CUDA array interface
  with ``sync=False`` (no implicit synchronisation) on the caller's stream
  (``cuda.external_stream`` on the torch stream handle): nothing syncs the host;
* ``"sim"``: CPU tensors under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``
  set before numba is first imported); the kernels see numpy views of the
  tensors, so they still write in place.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch

StreamLike = Any
"""A torch ``Stream``, a :class:`graphrt.cuda_kernels.streams.Stream`, a raw ``cudaStream_t`` int, or ``None``."""

_KERNEL_DTYPES = (torch.float16, torch.float32, torch.float64)
_KEY_SHIFT = {torch.float16: 42, torch.float32: 29, torch.float64: 0}
SIM_SWITCH_INTERVAL = 5e-4
"""GIL switch interval used while a simulated kernel runs: the simulator's
``syncthreads`` is a polled barrier, about 5x faster with this than with
Python's default 5 ms."""


def simulator_enabled() -> bool:
    """Whether Numba's CUDA simulator is (or will be) active, read without importing numba."""
    if "numba" in sys.modules:
        return bool(sys.modules["numba"].config.ENABLE_CUDASIM)
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


@functools.cache
def device_module():
    """The numba device-function module (imports numba on first use)."""
    from graphrt.cuda_kernels import _device

    return _device


def backend_for(t: torch.Tensor, where: str) -> str:
    """``"gpu"`` or ``"sim"`` for a kernel whose main input is ``t``; raises with a clear message otherwise."""
    if t.is_cuda:
        if simulator_enabled():
            raise RuntimeError(
                f"{where}: found a CUDA tensor while NUMBA_ENABLE_CUDASIM=1; expected CPU tensors in the "
                "simulator (unset NUMBA_ENABLE_CUDASIM to run on the GPU)"
            )
        return "gpu"
    if simulator_enabled():
        return "sim"
    from graphrt.cuda_kernels.streams import require_cuda

    require_cuda(f"{where} was given tensors on {t.device}; the kernel needs CUDA tensors "
                 "(or NUMBA_ENABLE_CUDASIM=1 for the simulator); the torch reference runs on CPU")
    raise RuntimeError(f"{where}: expected CUDA tensors, found tensors on {t.device}")


def check_same_device(where: str, main: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Every tensor in ``others`` is on ``main``'s device, else ``ValueError`` naming it."""
    for name, t in others.items():
        if isinstance(t, torch.Tensor) and t.device != main.device:
            raise ValueError(f"{where}: expected {name} on {main.device}, found {t.device}")


def logits_2d(logits: torch.Tensor, where: str) -> tuple[torch.Tensor, int]:
    """``logits [..., V]`` as a ``[R, V]`` view (a copy if not viewable) and the key shift of its dtype.

    bfloat16 is widened to float32 (exactly); other dtypes than float16/32/64 are refused.
    """
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"{where}: expected logits [..., V] with V >= 1, found shape {tuple(logits.shape)}")
    if logits.dtype == torch.bfloat16:
        logits = logits.float()
    if logits.dtype not in _KERNEL_DTYPES:
        raise TypeError(f"{where}: expected float16/bfloat16/float32/float64 logits, found {logits.dtype}")
    return logits.reshape(-1, logits.shape[-1]), _KEY_SHIFT[logits.dtype]


def as_kernel_array(t: torch.Tensor, backend: str):
    """The object a Numba kernel receives for ``t``: a no-sync CUDA array view, or a numpy view."""
    if backend == "gpu":
        from numba import cuda

        return cuda.as_cuda_array(t.detach(), sync=False)
    return t.detach().numpy()


@functools.cache
def _external_stream(handle: int):
    from numba import cuda

    return cuda.external_stream(handle)


def stream_handle(stream: StreamLike, device: torch.device) -> int:
    """The raw ``cudaStream_t`` of ``stream`` (torch's current stream on ``device`` when ``None``)."""
    if stream is None:
        return int(torch.cuda.current_stream(device).cuda_stream)
    if isinstance(stream, int):
        return stream
    for attr in ("cuda_stream", "handle"):
        if hasattr(stream, attr):
            return int(getattr(stream, attr))
    raise TypeError(f"expected a torch.cuda.Stream, a graphrt Stream or an int handle, found {type(stream).__name__}")


def launch(kernel, grid: int, block: int, backend: str, stream: StreamLike, device: torch.device,
           args: Sequence[Any]) -> None:
    """Launch ``kernel[grid, block, stream](*args)`` on the backend; never synchronises the host on GPU."""
    if grid == 0:
        return
    if backend == "gpu":
        kernel[grid, block, _external_stream(stream_handle(stream, device))](*args)
        return
    old = sys.getswitchinterval()
    sys.setswitchinterval(SIM_SWITCH_INTERVAL)
    try:
        kernel[grid, block](*args)
    finally:
        sys.setswitchinterval(old)


def row_threads(width: int, backend: str, threads: int | None, where: str) -> int:
    """Threads per block for a kernel that gives one block to a row of ``width`` entries.

    GPU: a multiple of 32 up to 1024 (default: enough for about 4 entries per
    thread); simulator: default 32 (each simulated thread costs about 0.1 ms).
    """
    if threads is None:
        if backend == "sim":
            return 32
        return int(min(1024, max(32, 32 * math.ceil(width / 4 / 32))))
    if not 1 <= threads <= 1024:
        raise ValueError(f"{where}: expected 1 <= threads <= 1024, found {threads}")
    if backend == "gpu" and threads % 32:
        raise ValueError(f"{where}: expected threads to be a multiple of 32 on a GPU, found {threads}")
    return threads


@functools.cache
def _dummy(device: str, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(1, dtype=dtype, device=device)


def row_param(value: float | int | torch.Tensor | None, batch: int, rows: int, name: str, where: str,
              dtype: torch.dtype, device: torch.device, backend: str) -> tuple[Any, Any, int]:
    """Kernel arguments ``(array, scalar, per)`` for a per-request parameter.

    A Python scalar travels as a kernel argument (no host-to-device copy; the
    array is a cached 1-element dummy, ``per = 0``); a ``[B]`` tensor is read
    as ``array[row // per]`` with ``per = rows // B`` rows per request.
    """
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            value = value.reshape(1).expand(batch)
        if value.shape != (batch,):
            raise ValueError(f"{where}: expected {name} as a scalar or a [B] = [{batch}] tensor, "
                             f"found shape {tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"{where}: expected {name} on {device}, found {value.device}")
        if value.dtype != dtype:
            value = value.to(dtype)
        return as_kernel_array(value.contiguous(), backend), (0.0 if dtype.is_floating_point else 0), rows // batch
    if value is None:
        raise ValueError(f"{where}: {name} must not be None")
    dummy = as_kernel_array(_dummy(str(device), dtype), backend)
    return dummy, (float(value) if dtype.is_floating_point else int(value)), 0


def scalar_or_row(value: float | int | torch.Tensor, b: int) -> float | int:
    """Row ``b``'s value of a per-request parameter (for the loop references)."""
    if isinstance(value, torch.Tensor):
        v = value.reshape(-1)[0] if value.dim() == 0 else value[b]
        return v.item()
    return value


def out_tensor(out: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
               name: str, where: str) -> torch.Tensor:
    """``out`` checked for shape/dtype/device/contiguity, or a new tensor when ``None``."""
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or out.device != device:
        raise ValueError(f"{where}: expected {name} of shape {tuple(shape)}, {dtype} on {device}; found "
                         f"{tuple(out.shape)}, {out.dtype} on {out.device}")
    if not out.is_contiguous():
        raise ValueError(f"{where}: expected {name} to be contiguous (it is written in place)")
    return out



def register_kernel(op: str, adapt: Any) -> None:
    """Register a batched kernel on registry op ``op``'s entry, as its ``"cuda"`` kernel.

    Parameters
    ----------
    op:
        A registered op name.
    adapt:
        ``adapt() -> impl``: the op's implementation with the registry's calling convention
        (per request, no batch dimension; scalar parameters as rank-0 tensors, attributes as
        keywords; results returned functionally) over the batched, in-place kernel launcher,
        for a batch of one and without host synchronisation.
    """
    from graphrt.registry import register_impls

    def factory(device: torch.device, simulator: bool) -> Any:
        if device.type == "cuda":
            from graphrt.cuda_kernels.streams import require_cuda

            require_cuda(f"op '{op}' on {device}")
        elif not simulator:
            return None
        return adapt()

    register_impls(op, kernels={"cuda": factory})


def row(x: torch.Tensor) -> torch.Tensor:
    """A rank-0 parameter as a ``[1]`` per-row tensor (no host sync)."""
    return x.reshape(1)


def reference(op: str) -> Any:
    """The registry's reference of ``op`` (the one definition the batched references loop over)."""
    from graphrt.registry import get_op

    return get_op(op).reference
