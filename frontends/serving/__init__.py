"""``graphrt serve``: an OpenAI-compatible HTTP server over one mixed-mode session.

:func:`serve` runs it; :func:`build_app` gives the FastAPI application (to
mount in another app or to run under another ASGI server). The pieces:
:mod:`.protocol` (request schemas and their translation), :mod:`.responses`
(response bodies and stream chunks), :mod:`.engine` (the engine thread that
steps the session), :mod:`.lockstep` (the engines of a tensor-parallel model's
ranks in step), :mod:`.metrics` (Prometheus), :mod:`.app` (the routes).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from graphrt.api import Model
from graphrt.frontends.serving.app import create_app
from graphrt.frontends.serving.engine import Engine
from graphrt.frontends.serving.protocol import Defaults

if TYPE_CHECKING:
    from fastapi import FastAPI


def model_name(model: Model) -> str:
    """The name a model is served under: its directory's name."""
    return Path(model.path).name or "graphrt"


def build_app(model: Model, name: str | None = None, max_active: int | None = None, max_queue: int = 64,
              default_mode: str = "ar", block_length: int | None = None,
              threshold: float | None = None) -> "FastAPI":
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
    """
    engine = Engine(model, max_active=max_active, max_queue=max_queue)
    defaults = Defaults(name or model_name(model), default_mode, block_length, threshold)
    return create_app(engine, defaults)


def serve(model: Model, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning",
          **app_args: object) -> None:
    """Serve ``model`` with uvicorn until interrupted (``app_args`` go to :func:`build_app`).

    On a tensor-parallel model call it on every rank (``torchrun ... -m graphrt serve --tp N``):
    rank 0 serves HTTP; the other ranks serve nothing and step their shard as rank 0
    decides. SIGINT and SIGTERM stop rank 0 gracefully, and it returns (not killed by the
    signal, which torchrun would take for a failure and answer by killing the other ranks);
    the other ranks ignore both and return when rank 0 has stopped them.

    Raises
    ------
    LockstepError
        The tensor-parallel ranks fell out of step or one is gone (rank 0 first fails its
        requests with a 503 and stops the server); any other error that stopped the engine
        loop likewise.
    """
    import uvicorn

    app = build_app(model, **app_args)  # type: ignore[arg-type]
    engine: Engine = app.state.engine
    if engine.lockstep is not None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):  # uvicorn's handlers replace these while it serves,
                signal.signal(sig, signal.SIG_IGN)        # then re-raise the signal that stopped it: ignored
        if not engine.lockstep.leader:
            engine.follow()
            return
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=2))
    engine.on_failure = lambda: setattr(server, "should_exit", True)
    server.run()
    if engine.failure is not None:
        raise engine.failure
