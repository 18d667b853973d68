"""Compile every kernel to PTX without a GPU (typing and lowering check for the real-device path).

The simulator runs kernels as Python, so it cannot catch what only Numba's
CUDA compiler rejects (types, unsupported calls). This module compiles each
kernel for a compute capability with ``numba.cuda.compile_ptx``; it needs
NVVM (the CUDA 13 wheels ``nvidia-nvvm`` and ``nvidia-cuda-nvrtc``, which the
``test`` extra installs, or a CUDA toolkit) but no GPU and no driver. Run it in a process without ``NUMBA_ENABLE_CUDASIM``::

    python -m graphrt.cuda_kernels.ptx_check        # exits non-zero on a failure
"""

from __future__ import annotations

import sys
import time
import types


def _signatures():
    from numba import types as T

    i64a, f64a = T.int64[:], T.float64[:]
    i64m = T.int64[:, :]
    scalar_f = (f64a, T.float64, T.int64)  # (array, scalar, per)
    scalar_i = (i64a, T.int64, T.int64)
    sigs = {}
    for name, f in (("f32", T.float32), ("f16", T.float16), ("f64", T.float64)):
        logits = f[:, :]
        sigs[f"sample[{name}]"] = ("_sample_jit", "sample_kernel", (
            logits, i64a, i64a, *scalar_f, *scalar_i, *scalar_f,
            i64a, T.int64, T.int64, T.int64, *scalar_i, T.int64, T.int64))
        sigs[f"argmax_confidence[{name}]"] = ("_argmax_confidence_jit", "argmax_confidence_kernel",
                                              (logits, i64a, f64a))
        sigs[f"confidence[{name}]"] = ("_argmax_confidence_jit", "confidence_kernel", (logits, i64a, T.float32[:]))
    sigs["denoise_select"] = ("_denoise_select_jit", "denoise_select_kernel", (
        i64m, i64m, T.float32[:, :], T.int64, T.boolean, *scalar_f, *scalar_i, i64a, T.boolean))
    sigs["verify_accept"] = ("_verify_accept_jit", "verify_accept_kernel", (i64m, i64m, *scalar_i, i64a, i64a, i64a))
    sigs["commit"] = ("_commit_jit", "commit_kernel", (i64a, i64a, T.boolean, T.int64, *scalar_i, T.int64, T.int64))
    sigs["uniform"] = ("_noise_jit", "uniform_kernel", (i64a, T.float64[:, :], T.int64, T.int64, T.int64, T.int64))
    return sigs


def compile_all(cc: tuple[int, int] = (9, 0), only: list[str] | None = None) -> dict[str, int]:
    """Compile each kernel to PTX for ``cc``; returns ``{kernel: PTX length}``.

    Raises
    ------
    RuntimeError
        Under the simulator (there is no compiler there).
    Exception
        The compiler's error for the first kernel that fails, with its name prepended.
    """
    import importlib

    import numba
    from numba import cuda

    if numba.config.ENABLE_CUDASIM:
        raise RuntimeError("ptx_check: NUMBA_ENABLE_CUDASIM is set; run it in a process without the simulator")
    import numba.cuda.dispatcher as dispatcher

    # Device functions ask the current device for its compute capability; without a GPU, answer `cc`.
    original = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    sizes = {}
    try:
        for name, (module, kernel, sig) in _signatures().items():
            if only and not any(name.startswith(o) for o in only):
                continue
            fn = getattr(importlib.import_module(f"graphrt.cuda_kernels.{module}"), kernel).py_func
            try:
                ptx, _ = cuda.compile_ptx(fn, sig, cc=cc)
            except Exception as exc:
                raise type(exc)(f"{name}: {exc}") from exc
            sizes[name] = len(ptx)
    finally:
        dispatcher.get_current_device = original
    return sizes


def main() -> int:
    """Compile everything for sm_90 and print one line per kernel."""
    t0 = time.perf_counter()
    sizes = compile_all()
    for name, size in sizes.items():
        print(f"{name}: {size} bytes of PTX")
    print(f"compiled {len(sizes)} kernels in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
