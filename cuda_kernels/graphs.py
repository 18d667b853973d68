"""CUDA graph capture and replay of static decode-step segments, through cuda-python.

The capture plan of the pass pipeline marks the maximal static segments of a
step (no host sync, no allocation, fixed shapes). :func:`capture` records one
such segment — any Python callable that launches work on the given stream,
Numba kernels (through the launchers' ``stream=``) and torch ops alike — into
a :class:`CapturedGraph`; :meth:`CapturedGraph.replay` relaunches it with one
``cudaGraphLaunch``. Inputs and outputs are the static buffers the segment
read and wrote during capture: update the inputs in place, replay, read the
outputs.

Rules for a capturable segment (violations surface as a ``RuntimeError``
from the capture naming the failed call):

* warm up first (``warmup >= 1``, the default): the first launch of a Numba
  kernel compiles and loads a module, which a capture forbids; the launchers'
  cached scalar-parameter buffers are also created then;
* no allocation and no host synchronisation inside (static ``out=`` buffers,
  scalar or preallocated ``[B]`` per-row parameters);
* everything inside runs on the capture stream (the launchers default to
  torch's current stream, which :func:`capture` sets to the capture stream).

Example (on a GPU)::

    step = lambda: (sample(logits, pos, seed=1, temperature=0.7, out=ar, stream=s),
                    verify_accept(block, ar, start=start, out_accepted=k, out_bonus=bonus,
                                  out_length=new_len, stream=s))
    graph = capture(step, stream=s)
    graph.replay(); s.synchronize()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from graphrt.cuda_kernels.streams import Stream, _check, _rt, require_cuda

__all__ = ["CapturedGraph", "capture"]


class CapturedGraph:
    """An instantiated CUDA graph (``cudaGraphExec_t``) with its source graph.

    Build with :func:`capture`; :meth:`replay` launches it on a stream.
    """

    def __init__(self, graph: Any, graph_exec: Any, stream: Stream, num_nodes: int) -> None:
        self._graph = graph
        self._exec = graph_exec
        self.stream = stream
        self.num_nodes = num_nodes

    def replay(self, stream: Stream | None = None) -> None:
        """Launch the graph on ``stream`` (the capture stream when ``None``); no host sync."""
        stream = stream if stream is not None else self.stream
        _check(_rt().cudaGraphLaunch(self._exec, stream.raw), "cudaGraphLaunch")

    def __repr__(self) -> str:
        return f"CapturedGraph(nodes={self.num_nodes}, stream={self.stream!r})"

    def __del__(self) -> None:
        try:
            rt = _rt()
            if getattr(self, "_exec", None) is not None:
                rt.cudaGraphExecDestroy(self._exec)
            if getattr(self, "_graph", None) is not None:
                rt.cudaGraphDestroy(self._graph)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def capture(fn: Callable[[], Any], *, stream: Stream | None = None, warmup: int = 1,
            mode: str = "thread_local") -> CapturedGraph:
    """Capture the work ``fn()`` queues on ``stream`` into a :class:`CapturedGraph`.

    Parameters
    ----------
    fn:
        Launches the segment. It runs ``warmup`` times eagerly, then once under
        capture, each time with torch's current stream set to ``stream``.
    stream:
        Capture stream; a new non-blocking stream when ``None`` (capture is not
        allowed on the legacy default stream).
    warmup:
        Eager runs before the capture (compiles kernels, creates cached buffers).
    mode:
        ``"thread_local"`` (default), ``"global"`` or ``"relaxed"``: the
        ``cudaStreamCaptureMode``.

    Returns
    -------
    CapturedGraph
        The instantiated graph; replay it with :meth:`CapturedGraph.replay`.
    """
    require_cuda("capture")
    rt = _rt()
    modes = {
        "thread_local": rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal,
        "global": rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal,
        "relaxed": rt.cudaStreamCaptureMode.cudaStreamCaptureModeRelaxed,
    }
    if mode not in modes:
        raise ValueError(f"capture: expected mode in {sorted(modes)}, found {mode!r}")
    stream = stream if stream is not None else Stream.create()
    with torch.cuda.stream(stream.torch()):
        for _ in range(warmup):
            fn()
        stream.synchronize()
        _check(rt.cudaStreamBeginCapture(stream.raw, modes[mode]), "cudaStreamBeginCapture")
        try:
            fn()
        except BaseException:
            graph = _check(rt.cudaStreamEndCapture(stream.raw), "cudaStreamEndCapture")
            rt.cudaGraphDestroy(graph)
            raise
        graph = _check(rt.cudaStreamEndCapture(stream.raw), "cudaStreamEndCapture (capture invalidated?)")
    nodes = _check(rt.cudaGraphGetNodes(graph, 0), "cudaGraphGetNodes")  # (nodes, count) or count
    num_nodes = nodes[-1] if isinstance(nodes, tuple) else nodes
    graph_exec = _check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
    return CapturedGraph(graph, graph_exec, stream, int(num_nodes))
