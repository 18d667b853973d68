"""The uvicorn server under ``graphrt serve``: connection timeouts, and a graceful drain on SIGTERM.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``), connections
at once (``limit_concurrency``, then 503) and a request head's size
(``h11_max_incomplete_event_size``), but not how long a client may take to send
its request head: :func:`head_timeout_protocol` adds that (a connection that has
not sent a whole head within the timeout is closed). The body's pace is the
:class:`~graphrt.frontends.serving.gate.Gate`'s.

:class:`DrainingServer` turns the first SIGTERM (or SIGINT) into a drain: the
server stops admitting (``/v1/`` answers 503 with ``Retry-After``, ``/health``
says ``draining``), lets the requests in flight finish for up to
``drain_timeout`` seconds, then stops the engine (each remaining stream ends with
an error event and ``[DONE]``, each waiting request gets a 503), and exits; the
process then exits 0. A second signal stops it at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import FrameType
from typing import Any, Callable

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from graphrt.frontends.serving.gate import Drain

log = logging.getLogger("graphrt.serve")
FLUSH_S = 5.0  # after the engine stopped, how long the last error events get to reach their clients


def head_timeout_protocol(timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request head takes longer than ``timeout`` s.

    The clock starts when the connection opens and again after each response (for the next
    request's head); it stops when a whole head has arrived.
    """

    class HeadTimeoutProtocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # noqa: D102
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:  # noqa: D102
            super().data_received(data)
            if self._in_request() and self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def on_response_complete(self) -> None:  # noqa: D102
            super().on_response_complete()
            if not self.transport.is_closing() and not self._in_request():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

        def _in_request(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _arm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(timeout, self._head_timed_out)

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self._in_request() and not self.transport.is_closing():
                self.transport.close()

    return HeadTimeoutProtocol


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM or SIGINT drains it (see the module's docstring).

    Parameters
    ----------
    config:
        uvicorn's configuration.
    drain:
        The application's drain state (``app.state.drain``).
    stop_engine:
        Stops the engine, failing the requests it still holds (called in a thread).
    drain_timeout:
        Seconds the requests in flight get to finish.
    """

    def __init__(self, config: uvicorn.Config, drain: Drain, stop_engine: Callable[[], None],
                 drain_timeout: float = 30.0) -> None:
        super().__init__(config)
        self.drain, self.stop_engine, self.drain_timeout = drain, stop_engine, drain_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None
        self._signals = 0

    async def serve(self, sockets: Any = None) -> None:  # noqa: D102
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: drain. Second: exit now (uvicorn's graceful shutdown). Third: force it.

        The signal is not re-raised after the server stops (uvicorn's own handler does that), so the
        process exits 0.
        """
        self._signals += 1
        if self._signals == 1 and self._loop is not None:
            self.drain.draining = True
            self._loop.call_soon_threadsafe(self._start_drain)
        elif self._signals == 2 or self._loop is None:
            self.should_exit = True
        else:
            self.force_exit = True

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        log.warning("draining: %d requests in flight get up to %g s to finish", self.drain.in_flight,
                    self.drain_timeout)
        end = time.monotonic() + self.drain_timeout
        while self.drain.in_flight and time.monotonic() < end and not self.should_exit:
            await asyncio.sleep(0.05)
        if self.drain.in_flight:
            log.warning("draining: %d requests still in flight after %g s; ending them", self.drain.in_flight,
                        self.drain_timeout)
        await asyncio.to_thread(self.stop_engine)
        end = time.monotonic() + FLUSH_S
        while self.drain.in_flight and time.monotonic() < end and not self.should_exit:
            await asyncio.sleep(0.05)
        self.should_exit = True
