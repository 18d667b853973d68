"""Property-based testing of decode kernels against their reference semantics.

Hypothesis strategies for the awkward inputs decode kernels meet (logits with
ties, extreme values and NaN/inf rows, vocabulary sizes that are not
multiples of the thread-block size, masked blocks, drafts with every accepted
length) and :func:`check_kernel`, which runs a kernel and a reference on the
same inputs and reports every mismatch clearly. Kernels run in Numba's CUDA
simulator on CPU (:func:`enable_simulator`, before numba is first imported)
or on a GPU when there is one. See ``docs/testing_kernels.md``.

Importing this module imports torch only: the strategies and
:func:`kernel_settings` (in :mod:`graphrt._strategies`) import hypothesis when
first used, and numba is never imported here. The tiny checkpoint writers
(``write_release_checkpoint``, ``write_transformers_checkpoint``,
``tiny_tokenizer``) are in :mod:`graphrt.frontends.fixtures`.

>>> from hypothesis import given
>>> @given(logits(batch=2, vocab=vocab_sizes(max_value=40)))
... def test_argmax(x):
...     check_kernel(argmax_kernel, argmax_reference, x)      # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "KernelCheck",
    "as_kernel_array",
    "blocks",
    "check_kernel",
    "confidences",
    "drafts",
    "enable_simulator",
    "kernel_device",
    "kernel_settings",
    "kernel_threads",
    "logits",
    "masks",
    "sampling_params",
    "vocab_sizes",
]

_STRATEGIES = ("MASK_TOKEN_ID", "blocks", "confidences", "drafts", "kernel_settings", "kernel_threads", "logits",
               "masks", "sampling_params", "vocab_sizes")


def __getattr__(name: str) -> Any:
    """The hypothesis strategies and settings of :mod:`graphrt._strategies` (hypothesis is imported on first use)."""
    if name in _STRATEGIES:
        from graphrt import _strategies

        return getattr(_strategies, name)
    raise AttributeError(f"module 'graphrt.testing' has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# Where kernels run
# --------------------------------------------------------------------------------------------
def enable_simulator() -> None:
    """Turn on Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).

    Must run before numba is first imported (e.g. at the top of a
    ``conftest.py``); raises ``RuntimeError`` if numba is already imported
    without the simulator.
    """
    numba = sys.modules.get("numba")
    if numba is not None:
        if not numba.config.ENABLE_CUDASIM:
            raise RuntimeError("enable_simulator: numba was imported before NUMBA_ENABLE_CUDASIM=1 was set; "
                               "set it before the first numba import (e.g. at the top of conftest.py)")
        return
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"


def as_kernel_array(t: torch.Tensor) -> Any:
    """What a raw Numba kernel should receive for tensor ``t``: a no-sync CUDA array view of a CUDA
    tensor, or a numpy view of a CPU tensor in the simulator (both share ``t``'s memory, so kernels
    write in place)."""
    from graphrt.cuda_kernels._launch import as_kernel_array as convert

    return convert(t, "gpu" if t.is_cuda else "sim")


def kernel_device() -> str:
    """``"sim"`` when the simulator is enabled, else ``"cuda"`` (kernels need one or the other)."""
    from graphrt.cuda_kernels._launch import simulator_enabled

    return "sim" if simulator_enabled() else "cuda"


@dataclass
class Mismatch:
    """One output (or in-place input) that differs between kernel and reference."""

    name: str
    count: int
    total: int
    examples: list[tuple[tuple[int, ...], Any, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"  {self.name}: {self.count} of {self.total} entries differ"]
        for index, got, want in self.examples:
            lines.append(f"    at {index}: kernel {got!r}, reference {want!r}")
        return "\n".join(lines)


@dataclass
class KernelCheck:
    """Result of :func:`check_kernel`: the outputs of both sides and the mismatches."""

    device: str
    kernel_out: Any
    reference_out: Any
    mismatches: list[Mismatch]

    @property
    def ok(self) -> bool:
        """Whether every compared tensor agreed."""
        return not self.mismatches

    def report(self) -> str:
        """A readable summary of the mismatches (empty string when :attr:`ok`)."""
        if self.ok:
            return ""
        return f"kernel differs from reference on {self.device}:\n" + "\n".join(str(m) for m in self.mismatches)


def _flatten(out: Any, prefix: str) -> list[tuple[str, Any]]:
    if isinstance(out, torch.Tensor) or out is None:
        return [(prefix, out)]
    if isinstance(out, (tuple, list)):
        items: list[tuple[str, Any]] = []
        for i, o in enumerate(out):
            items.extend(_flatten(o, f"{prefix}[{i}]"))
        return items
    if isinstance(out, dict):
        items = []
        for k, o in out.items():
            items.extend(_flatten(o, f"{prefix}[{k!r}]"))
        return items
    return [(prefix, out)]


def _compare(name: str, got: Any, want: Any, rtol: float, atol: float, max_examples: int) -> Mismatch | None:
    if not isinstance(want, torch.Tensor):
        return None if got == want else Mismatch(name, 1, 1, [((), got, want)])
    if not isinstance(got, torch.Tensor):
        return Mismatch(name, 1, 1, [((), type(got).__name__, "Tensor")])
    got = got.detach().cpu()
    want = want.detach().cpu()
    if got.shape != want.shape:
        return Mismatch(name, 1, 1, [((), f"shape {tuple(got.shape)}", f"shape {tuple(want.shape)}")])
    if want.dtype.is_floating_point or got.dtype.is_floating_point:
        g, w = got.to(torch.float64), want.to(torch.float64)
        same = torch.isclose(g, w, rtol=rtol, atol=atol, equal_nan=True) | (g == w)
    else:
        same = got == want
    bad = (~same).nonzero()
    if bad.numel() == 0:
        return None
    examples = [(tuple(int(i) for i in idx), got[tuple(idx)].item(), want[tuple(idx)].item())
                for idx in bad[:max_examples]]
    return Mismatch(name, int(bad.shape[0]), want.numel(), examples)


def _to(value: Any, device: str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone().to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def check_kernel(
    kernel_fn: Callable[..., Any],
    reference_fn: Callable[..., Any],
    *args: Any,
    device: str | None = None,
    rtol: float | dict[str, float] = 0.0,
    atol: float | dict[str, float] = 0.0,
    check_inputs: bool = True,
    raise_on_mismatch: bool = True,
    max_examples: int = 5,
    **kwargs: Any,
) -> KernelCheck:
    """Run ``kernel_fn`` and ``reference_fn`` on copies of the same inputs and compare.

    The reference runs on CPU copies; the kernel on ``device`` copies
    (``"sim"``: CPU tensors in Numba's CUDA simulator; ``"cuda"``: GPU
    tensors). Compared: every tensor the two return (tuples, lists and dicts
    are walked) and, with ``check_inputs``, every tensor argument afterwards
    (kernels that work in place must leave the same values).

    Parameters
    ----------
    kernel_fn, reference_fn:
        Callables with the same signature; ``args``/``kwargs`` go to both.
    device:
        ``"sim"``, ``"cuda"`` or ``None`` (:func:`kernel_device`).
    rtol, atol:
        Tolerances for float outputs (0: bitwise, NaN equal to NaN); a dict
        maps output names as reported (``"out[1]"``, ``"arg[0]"``) to tolerances.
    check_inputs:
        Also compare tensor arguments after the call (in-place results).
    raise_on_mismatch:
        Raise ``AssertionError`` with :meth:`KernelCheck.report` on a mismatch.
    max_examples:
        Differing entries listed per output.

    Returns
    -------
    KernelCheck
        Both outputs and the list of mismatches.
    """
    device = device or kernel_device()
    if device == "sim":
        enable_simulator()
        run_on = "cpu"
    elif device == "cuda":
        from graphrt.cuda_kernels.streams import require_cuda

        require_cuda("check_kernel(device='cuda')")
        run_on = "cuda"
    else:
        raise ValueError(f"check_kernel: expected device 'sim' or 'cuda', found {device!r}")
    ref_args, ref_kwargs = _to(list(args), "cpu"), _to(kwargs, "cpu")
    ker_args, ker_kwargs = _to(list(args), run_on), _to(kwargs, run_on)
    reference_out = reference_fn(*ref_args, **ref_kwargs)
    kernel_out = kernel_fn(*ker_args, **ker_kwargs)
    if run_on == "cuda":
        torch.cuda.synchronize()
    pairs = list(zip(_flatten(kernel_out, "out"), _flatten(reference_out, "out")))
    if check_inputs:
        pairs += [((f"arg[{i}]", k), (f"arg[{i}]", r)) for i, (k, r) in enumerate(zip(ker_args, ref_args))
                  if isinstance(r, torch.Tensor)]
        pairs += [((f"arg[{n!r}]", ker_kwargs[n]), (f"arg[{n!r}]", r)) for n, r in ref_kwargs.items()
                  if isinstance(r, torch.Tensor)]
    mismatches = []
    for (name, got), (_, want) in pairs:
        r = rtol.get(name, 0.0) if isinstance(rtol, dict) else rtol
        a = atol.get(name, 0.0) if isinstance(atol, dict) else atol
        m = _compare(name, got, want, r, a, max_examples)
        if m is not None:
            mismatches.append(m)
    result = KernelCheck(device, kernel_out, reference_out, mismatches)
    if raise_on_mismatch and not result.ok:
        raise AssertionError(result.report() + "\n" + _describe_inputs(args, kwargs))
    return result


def _describe_inputs(args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        if isinstance(v, torch.Tensor):
            text = repr(v) if v.numel() <= 64 else f"tensor(shape={tuple(v.shape)}, dtype={v.dtype})"
            return text.replace("\n", "\n      ")
        return repr(v)

    lines = ["inputs:"] + [f"  arg[{i}] = {show(a)}" for i, a in enumerate(args)]
    lines += [f"  {k} = {show(v)}" for k, v in kwargs.items()]
    return "\n".join(lines)
