"""CUDA streams and events through cuda-python, with interop to torch and Numba.

The executor runs the stream schedule of the pass pipeline with these
(:class:`graphrt.executor.StreamRunner`): torch's current stream as stream 0
(:func:`current_stream`), one created :class:`Stream` per side stream, an
:class:`Event` per cross-stream edge (``producer.record(e)``,
``consumer.wait(e)``). A :class:`Stream` is a raw ``cudaStream_t`` handle:
:meth:`Stream.torch` gives the torch view of it (for ``with
torch.cuda.stream(s.torch()):``) and :meth:`Stream.numba` the Numba view the
kernel launchers use, so torch ops and Numba kernels share one queue.

Detecting a machine without a GPU never raises: :func:`cuda_available` asks
``cuda.bindings.runtime.cudaGetDeviceCount()``, which returns an error code
(35, ``cudaErrorInsufficientDriver``, with no driver) instead of raising;
:func:`require_cuda` turns "no device" into one clear ``RuntimeError``.

Everything here imports cuda-python lazily, so importing the module is free.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = [
    "Event",
    "Stream",
    "cuda_available",
    "cuda_unavailable_reason",
    "current_stream",
    "require_cuda",
]


def _rt():
    from cuda.bindings import runtime

    return runtime


@functools.cache
def _device_count() -> tuple[int, str]:
    """``(count, reason)``: the number of CUDA devices, and why it is 0."""
    try:
        rt = _rt()
    except ImportError as exc:  # cuda-python not installed
        return 0, f"cuda-python is not installed ({exc})"
    try:
        err, count = rt.cudaGetDeviceCount()
    except Exception as exc:  # noqa: BLE001 - a broken driver install must not crash detection
        return 0, f"cudaGetDeviceCount raised {type(exc).__name__}: {exc}"
    if err != rt.cudaError_t.cudaSuccess:
        return 0, f"cudaGetDeviceCount returned {err.name} ({int(err)})"
    if count == 0:
        return 0, "cudaGetDeviceCount found 0 devices"
    return int(count), ""


def cuda_available() -> bool:
    """Whether at least one CUDA device is usable (never raises; cached)."""
    return _device_count()[0] > 0


def cuda_unavailable_reason() -> str:
    """Why :func:`cuda_available` is false (empty when a device is available)."""
    return _device_count()[1]


def require_cuda(what: str = "") -> None:
    """Raise ``RuntimeError("CUDA requested but no CUDA device is available: ...")`` without a device.

    Parameters
    ----------
    what:
        What asked for CUDA (included in the message).
    """
    if not cuda_available():
        detail = cuda_unavailable_reason()
        where = f" ({what})" if what else ""
        raise RuntimeError(f"CUDA requested but no CUDA device is available: {detail}{where}")


def _check(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(err, *values)`` result, raising ``RuntimeError`` naming ``what`` on error."""
    rt = _rt()
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if err != rt.cudaError_t.cudaSuccess:
        _, msg = rt.cudaGetErrorString(err)
        raise RuntimeError(f"{what} failed: {err.name}: {msg.decode() if isinstance(msg, bytes) else msg}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


class Event:
    """A CUDA event (``cudaEvent_t``) created through cuda-python.

    Parameters
    ----------
    timing:
        Create a timing event (for :meth:`elapsed_ms`); otherwise
        ``cudaEventDisableTiming``, cheaper for pure synchronisation.
    """

    def __init__(self, timing: bool = False) -> None:
        require_cuda("Event")
        rt = _rt()
        flags = rt.cudaEventDefault if timing else rt.cudaEventDisableTiming
        self._event = _check(rt.cudaEventCreateWithFlags(flags), "cudaEventCreateWithFlags")
        self.timing = timing

    @property
    def handle(self) -> int:
        """The raw ``cudaEvent_t`` as an int."""
        return int(self._event)

    def record(self, stream: Stream | None = None) -> Event:
        """Record this event on ``stream`` (torch's current stream when ``None``); returns self."""
        stream = stream if stream is not None else current_stream()
        _check(_rt().cudaEventRecord(self._event, stream.raw), "cudaEventRecord")
        return self

    def synchronize(self) -> None:
        """Block the host until the event completes (a host sync: not for the hot step)."""
        _check(_rt().cudaEventSynchronize(self._event), "cudaEventSynchronize")

    def elapsed_ms(self, end: Event) -> float:
        """Milliseconds from this event to ``end`` (both timing events, both completed)."""
        return float(_check(_rt().cudaEventElapsedTime(self._event, end._event), "cudaEventElapsedTime"))

    def __del__(self) -> None:
        event = getattr(self, "_event", None)
        if event is not None:
            try:
                _rt().cudaEventDestroy(event)
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass


class Stream:
    """A CUDA stream handle usable from cuda-python, torch and Numba.

    Create one with :meth:`create` (a new non-blocking stream owned by this
    object) or wrap an existing one with :meth:`from_torch` / :meth:`from_handle`
    (not owned: never destroyed here).
    """

    def __init__(self, handle: int, *, owned: bool = False, device: int | None = None) -> None:
        self.handle = int(handle)
        self.owned = owned
        self.device = torch.cuda.current_device() if device is None else device

    @classmethod
    def create(cls, device: int | None = None) -> Stream:
        """A new non-blocking stream on ``device`` (the current device when ``None``)."""
        require_cuda("Stream.create")
        rt = _rt()
        device = torch.cuda.current_device() if device is None else device
        with torch.cuda.device(device):  # the runtime creates the stream on its current device
            raw = _check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        return cls(int(raw), owned=True, device=device)

    @classmethod
    def from_torch(cls, stream: torch.cuda.Stream) -> Stream:
        """Wrap a torch stream (shares its queue; not owned)."""
        return cls(int(stream.cuda_stream), device=stream.device.index)

    @classmethod
    def from_handle(cls, handle: int, device: int | None = None) -> Stream:
        """Wrap a raw ``cudaStream_t`` (not owned)."""
        return cls(handle, device=device)

    @property
    def cuda_stream(self) -> int:
        """The raw handle (the attribute name torch streams use, so launchers accept either)."""
        return self.handle

    @property
    def raw(self):
        """The handle as a ``cuda.bindings.runtime.cudaStream_t``."""
        return _rt().cudaStream_t(self.handle)

    def torch(self) -> torch.cuda.ExternalStream:
        """A torch view of this stream (``with torch.cuda.stream(s.torch()): ...``)."""
        return torch.cuda.ExternalStream(self.handle, device=torch.device("cuda", self.device))

    def numba(self):
        """A Numba view of this stream (``kernel[grid, block, s.numba()](...)``)."""
        from numba import cuda

        return cuda.external_stream(self.handle)

    def record(self, event: Event | None = None) -> Event:
        """Record ``event`` (a new non-timing one when ``None``) on this stream and return it."""
        event = event if event is not None else Event()
        return event.record(self)

    def wait(self, event: Event) -> None:
        """Make later work on this stream wait for ``event`` (device-side; no host sync)."""
        _check(_rt().cudaStreamWaitEvent(self.raw, event._event, 0), "cudaStreamWaitEvent")

    def wait_stream(self, other: Stream) -> None:
        """Make later work on this stream wait for the work queued so far on ``other``."""
        self.wait(other.record())

    def synchronize(self) -> None:
        """Block the host until the stream drains (a host sync: not for the hot step)."""
        _check(_rt().cudaStreamSynchronize(self.raw), "cudaStreamSynchronize")

    def is_capturing(self) -> bool:
        """Whether a graph capture is in progress on this stream."""
        rt = _rt()
        status = _check(rt.cudaStreamIsCapturing(self.raw), "cudaStreamIsCapturing")
        return status != rt.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone

    def __repr__(self) -> str:
        return f"Stream(handle=0x{self.handle:x}, device={self.device}, owned={self.owned})"

    def __del__(self) -> None:
        if getattr(self, "owned", False):
            try:
                _rt().cudaStreamDestroy(self.raw)
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass


def current_stream(device: int | None = None) -> Stream:
    """torch's current stream on ``device`` as a :class:`Stream` (not owned)."""
    require_cuda("current_stream")
    return Stream.from_torch(torch.cuda.current_stream(device))
