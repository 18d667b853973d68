"""``graphrt serve``: an OpenAI-compatible HTTP server over one mixed-mode session.

:func:`serve` runs it; :func:`build_app` gives the FastAPI application (to
mount in another app or to run under another ASGI server). The pieces:
:mod:`.protocol` (request schemas, their ranges and their translation),
:mod:`.responses` (response bodies and stream chunks), :mod:`.engine` (the engine
thread that steps the session), :mod:`.isolation` (a session whose requests fail
one by one), :mod:`.lockstep` (the engines of a tensor-parallel model's ranks in
step), :mod:`.metrics` (Prometheus), :mod:`.gate` (host, API keys, content type,
body size, drain), :mod:`.app` (the routes), :mod:`.http_server` (uvicorn with
connection timeouts and a graceful drain).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graphrt.api import Model
from graphrt.frontends.serving.app import create_app, limits_for
from graphrt.frontends.serving.engine import POLICY_CACHE_SIZE, STALL_S, Engine
from graphrt.frontends.serving.gate import LOOPBACK_NAMES, Drain, GateConfig, is_loopback
from graphrt.frontends.serving.protocol import Defaults

_log = logging.getLogger("graphrt.serve")

MAX_BODY_BYTES = 2 * 2**20  # default largest request body
MAX_HEADER_BYTES = 16 * 2**10  # largest request head (uvicorn's h11_max_incomplete_event_size)

if TYPE_CHECKING:
    from fastapi import FastAPI


def model_name(model: Model) -> str:
    """The name a model is served under: its directory's name."""
    return Path(model.path).name or "graphrt"


def build_app(model: Model, name: str | None = None, max_active: int | None = None, max_queue: int = 64,
              default_mode: str = "ar", block_length: int | None = None, threshold: float | None = None,
              api_keys: tuple[str, ...] = (), metrics_public: bool = False, max_body_bytes: int = MAX_BODY_BYTES,
              read_timeout: float = 15.0, allowed_hosts: tuple[str, ...] | None = None,
              max_tokens: int | None = None, max_messages: int = 256, request_timeout: float = 600.0,
              policy_cache: int = POLICY_CACHE_SIZE, stall_timeout: float = STALL_S,
              cost_model: Any = None, calibrate_s: float = 2.0) -> "FastAPI":
    """The FastAPI application serving ``model`` (the engine starts with the app).

    Parameters
    ----------
    model:
        A loaded :class:`graphrt.Model`; its backbone's rows bound the active requests.
    name:
        The model name clients ask for (default: the model directory's name).
    max_active, max_queue:
        Requests active at once (default: every cache row); requests that may wait for a row
        before the server answers 429.
    default_mode, block_length, threshold:
        What a request that names no ``mode`` (or knob) gets.
    api_keys, metrics_public:
        Keys a client must present as ``Authorization: Bearer KEY`` (none: open); whether
        ``/metrics`` is open all the same (``/health`` always is).
    max_body_bytes, read_timeout:
        The largest request body (413 beyond); seconds a request body may pause (408 beyond).
    allowed_hosts:
        Host names a ``Host`` or ``Origin`` header may name (``None``: any).
    max_tokens, max_messages, request_timeout:
        The largest ``max_tokens`` (``None``: what fits the model), the most chat messages, and
        the longest (and default) ``timeout`` of a request in seconds.
    policy_cache, stall_timeout:
        Compiled policies kept; seconds without progress after which ``/health`` reports the
        engine stalled.
    cost_model, calibrate_s:
        The backbone's cost model, which mode ``auto`` prices its choices with and the engine's session
        splits a round by (a prompt joining decoding rows gets a call of its own where that is cheaper
        than padding them to its length); default: the cached one or a calibration of at most
        ``calibrate_s`` seconds now (0: none; it then measures as requests run). Where the engine never
        splits a round (tensor parallel), only with ``default_mode="auto"``. Without it a server splits no
        round until its own measurements cover enough call shapes: a self-spec server took 12.5 s and
        peaked at 2,295 MiB for 16 SmolLM2 requests arriving together, against 8.0 s and 1,530 MiB.
    """
    engine = Engine(model, max_active=max_active, max_queue=max_queue, policy_cache=policy_cache,
                    stall_s=stall_timeout, cost_model=cost_model)
    if cost_model is None and (default_mode == "auto" or engine.session.split_calls):
        from graphrt.cost_model import for_model

        engine.session.cost_model = for_model(model, budget_s=calibrate_s, measure=calibrate_s > 0, log=_log.info)
    defaults = Defaults(name or model_name(model), default_mode, block_length, threshold)
    limits = limits_for(engine, max_tokens=max_tokens, max_messages=max_messages, request_timeout=request_timeout)
    gate = GateConfig(tuple(api_keys), metrics_public, max_body_bytes, read_timeout, allowed_hosts)
    return create_app(engine, defaults, limits, gate, Drain())


def serve(model: Model, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning",
          drain_timeout: float = 30.0, max_connections: int = 256, keep_alive_timeout: float = 5.0,
          allowed_hosts: tuple[str, ...] = (), **app_args: object) -> None:
    """Serve ``model`` with uvicorn until interrupted (``app_args`` go to :func:`build_app`).

    ``drain_timeout``: seconds the requests in flight get to finish after SIGTERM (then each
    remaining one ends with an error). ``max_connections``: connections at once (uvicorn's
    ``limit_concurrency``; 503 beyond). ``keep_alive_timeout``: seconds an idle connection is
    kept. ``allowed_hosts``: host names ``Host`` may name besides the loopback names, which
    are the only ones accepted when ``host`` is a loopback address (any is, otherwise, unless
    some are given here).

    On a tensor-parallel model call it on every rank (``torchrun ... -m graphrt serve --tp N``):
    rank 0 serves HTTP; the other ranks serve nothing and step their shard as rank 0
    decides. The first SIGINT or SIGTERM drains rank 0 (:mod:`.http_server`: no new request,
    those in flight get ``drain_timeout`` seconds, the rest end with an error) and it returns
    (not killed by the signal, which torchrun would take for a failure and answer by killing
    the other ranks; so a drained server exits 0); the other ranks ignore both and return when
    rank 0 has stopped them.

    Raises
    ------
    LockstepError
        The tensor-parallel ranks fell out of step or one is gone (rank 0 first fails its
        requests with a 503 and stops the server); any other error that stopped the engine
        loop likewise.
    """
    import uvicorn

    from graphrt.frontends.serving.http_server import DrainingServer, head_timeout_protocol

    hosts = tuple(h.lower() for h in allowed_hosts)
    if is_loopback(host):
        hosts = LOOPBACK_NAMES + hosts
    app = build_app(model, allowed_hosts=hosts or None, **app_args)  # type: ignore[arg-type]
    engine: Engine = app.state.engine
    if engine.lockstep is not None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):  # uvicorn's handlers replace these while it serves,
                signal.signal(sig, signal.SIG_IGN)        # then re-raise the signal that stopped it: ignored
        if not engine.lockstep.leader:
            engine.follow()
            return
    read_timeout = float(app_args.get("read_timeout", 15.0))  # type: ignore[arg-type]
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5,
                            http=head_timeout_protocol(read_timeout), timeout_keep_alive=keep_alive_timeout,
                            limit_concurrency=max_connections, h11_max_incomplete_event_size=MAX_HEADER_BYTES)
    server = DrainingServer(config, app.state.drain, engine.stop, drain_timeout)
    engine.on_failure = lambda: setattr(server, "should_exit", True)
    server.run()
    if engine.failure is not None:
        raise engine.failure
