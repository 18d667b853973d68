"""The compiled backbone's static shapes, and compiling them without stalling the caller.

:class:`ShapeBuckets` is the set of shapes a compiled layer stack runs at (every call
padded to one); :func:`compile_layers` compiles the stack once per shape;
:class:`BackgroundCompiler` compiles each bucket on a worker thread the first time a
call needs it, while the caller runs that call eagerly, so a long-running engine never
waits for a compile.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Hashable

import torch
import torch.nn.functional as F

from graphrt.backbone import ForwardBatch

if TYPE_CHECKING:
    from .transformer import Transformer

log = logging.getLogger("graphrt.compile")


@dataclass(frozen=True)
class ShapeBuckets:
    """The static shapes the compiled backbone runs at.

    Attributes
    ----------
    widths:
        Call widths ``L`` (sorted): 1 (AR), the block ``b`` (diffusion, linear
        self-speculation, short prefills), ``b * (b + 1)`` (quadratic
        self-speculation), and powers of two from 16 for longer prefills; a call is
        padded to the smallest width that holds it.
    min_keys, max_keys:
        Key spans are rounded up to a power of two of at least ``min_keys``, at most
        ``max_keys`` (the row's slots).
    batches:
        Batch sizes (sorted): powers of two below the cache's row count, and the row count;
        a call is padded with padding rows to the smallest that holds it.
    """

    widths: tuple[int, ...]
    min_keys: int
    max_keys: int
    batches: tuple[int, ...] = (1,)

    @classmethod
    def for_block(cls, block: int, max_keys: int, max_rows: int = 1, min_keys: int = 64) -> "ShapeBuckets":
        """The buckets for a model of block length ``block``, ``max_keys`` slots per row and
        ``max_rows`` cache rows."""
        return cls(tuple(sorted({1, block, block * (block + 1), max_keys} | set(_powers_of_two(16, max_keys)))),
                   min(min_keys, max_keys), max_keys, tuple(sorted({max_rows} | set(_powers_of_two(1, max_rows)))))

    def graphs(self) -> int:
        """An upper bound on the graphs these buckets compile: every batch, width and key span (plus the
        causal prefill's none), with either row layout and either logits request."""
        spans = len(_powers_of_two(self.min_keys, self.max_keys)) + 1
        return len(self.batches) * len(self.widths) * (spans + 1) * 2 * 2

    def batch(self, n: int) -> int:
        """The bucket batch size for a call of ``n`` rows (``n`` itself past the largest)."""
        return next((b for b in self.batches if b >= n), n)

    def width(self, n: int) -> int:
        """The bucket width for a call of ``n`` tokens (``n`` itself past the largest)."""
        return next((w for w in self.widths if w >= n), n)

    def keys(self, n: int) -> int:
        """The bucketed key span for ``n`` needed keys."""
        k = self.min_keys
        while k < n:
            k *= 2
        return min(max(k, n), self.max_keys) if n <= self.max_keys else n


def _powers_of_two(start: int, below: int) -> list[int]:
    """``start, 2 * start, ...`` while below ``below``."""
    out = []
    while start < below:
        out.append(start)
        start *= 2
    return out


def pad_width(batch: ForwardBatch, width: int) -> ForwardBatch:
    """``batch`` right-padded to ``width`` tokens per row (padding: invalid, not written)."""
    B, L = batch.tokens.shape
    extra = width - L

    def pad(t: torch.Tensor, value: int | bool) -> torch.Tensor:
        return F.pad(t, (0, extra), value=value)

    attention = F.pad(batch.attention, (0, extra, 0, extra), value=False)
    return ForwardBatch(batch.rows, pad(batch.tokens, 0), pad(batch.positions, 0), attention, "mask",
                        pad(batch.kv_write, False), pad(batch.adapter, False), pad(batch.valid, False), batch.logits)


def compile_layers(model: "Transformer", buckets: ShapeBuckets, freeze: bool = False) -> Callable[..., torch.Tensor]:
    """``model.run_layers`` under ``torch.compile(fullgraph=True, dynamic=False)``: one graph per
    static shape of ``buckets`` (dynamo's recompile limits raised to hold them all, so no bucket
    falls back to eager), inductor's compiled code cached on disk (``TORCHINDUCTOR_CACHE_DIR``).
    ``freeze`` turns on inductor's weight freezing (weights folded as constants; the model must
    not be trained afterwards).
    """
    import torch._dynamo
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    if freeze:
        inductor_config.freezing = True
    config = torch._dynamo.config
    config.cache_size_limit = max(config.cache_size_limit, buckets.graphs())
    config.accumulated_cache_size_limit = max(config.accumulated_cache_size_limit, buckets.graphs())
    return torch.compile(model.run_layers, fullgraph=True, dynamic=False)


class BackgroundCompiler:
    """Compiles shape buckets on one worker thread, in the order calls first need them.

    Parameters
    ----------
    compile_one:
        Compiles one bucket (runs the compiled stack once at that shape); called on the
        worker thread under ``torch.no_grad()``.

    Attributes
    ----------
    seconds:
        Bucket -> seconds its compile took (the buckets ready to run compiled).
    failed:
        Bucket -> the error its compile raised (that bucket keeps running eagerly).
    """

    def __init__(self, compile_one: Callable[[Hashable], None]) -> None:
        self._compile_one = compile_one
        self.seconds: dict[Hashable, float] = {}
        self.failed: dict[Hashable, BaseException] = {}
        self._queued: set[Hashable] = set()
        self._queue: queue.Queue[Hashable] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="graphrt-compile", daemon=True)
        self._thread.start()

    def ready(self, key: Hashable) -> bool:
        """Whether bucket ``key`` has been compiled; queues its compile the first time it is asked for."""
        if key in self.seconds:
            return True
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put(key)
        return False

    def wait(self) -> None:
        """Block until every queued bucket is compiled (or failed)."""
        self._queue.join()

    def _work(self) -> None:
        while True:
            key = self._queue.get()
            t0 = time.perf_counter()
            try:
                with torch.no_grad():
                    self._compile_one(key)
            except Exception as exc:  # noqa: BLE001 -- a failed bucket runs eagerly; the error is kept and logged
                self.failed[key] = exc
                log.warning("compiling bucket %s failed, it keeps running eagerly: %s", key, exc)
            else:
                self.seconds[key] = time.perf_counter() - t0
                log.info("compiled bucket %s in %.1f s", key, self.seconds[key])
            finally:
                self._queue.task_done()


__all__ = ["ShapeBuckets", "BackgroundCompiler", "compile_layers", "pad_width"]
