"""``graphrt serve``: an OpenAI-compatible HTTP server over one mixed-mode session.

:func:`serve` runs it; :func:`build_app` gives the FastAPI application (to
mount in another app or to run under another ASGI server). The pieces:
:mod:`.protocol` (request schemas and their translation), :mod:`.responses`
(response bodies and stream chunks), :mod:`.engine` (the engine thread that
steps the session), :mod:`.metrics` (Prometheus), :mod:`.app` (the routes).
"""

from __future__ import annotations

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
    """Serve ``model`` with uvicorn until interrupted (``app_args`` go to :func:`build_app`)."""
    import uvicorn

    app = build_app(model, **app_args)  # type: ignore[arg-type]
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=2)
