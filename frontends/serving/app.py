"""The FastAPI application: OpenAI's endpoints over an :class:`~graphrt.frontends.serving.engine.Engine`.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions``,
``GET /v1/models``, ``GET /health``, ``GET /metrics``. Every error is an
OpenAI-style JSON body ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from graphrt.frontends.policies import MODES
from graphrt.frontends.serving import responses
from graphrt.frontends.serving.engine import Engine, Failed, Finished, Job, Tokens
from graphrt.api import prepare
from graphrt.frontends.serving.protocol import (ChatRequest, CompletionRequest, Decode, Defaults, RequestError,
                                                chat_messages, completion_prompt, decode_settings)

log = logging.getLogger("graphrt.serve")
BodyT = TypeVar("BodyT", bound=BaseModel)
DISCONNECT_POLL_S = 0.25  # how often a waiting handler checks that its client is still there


class ClientGone(Exception):
    """The client disconnected while its request waited or ran."""


def create_app(engine: Engine, defaults: Defaults) -> FastAPI:
    """The application serving ``engine`` under the model name ``defaults.model``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not engine.alive:
            engine.start()
        await asyncio.to_thread(_warm_up, engine, defaults)
        yield
        await asyncio.to_thread(engine.stop)

    app = FastAPI(title="graphrt", lifespan=lifespan)
    app.state.engine = engine
    tokenizer = engine.model.tokenizer

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error_response(engine, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(engine, RequestError(exc.status_code, f"{request.method} {request.url.path}: "
                                                                    f"{exc.detail}"))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return error_response(engine, RequestError(500, f"internal error: {type(exc).__name__}: {exc}",
                                                   kind="server_error"))

    @app.get("/health")
    async def health() -> JSONResponse:
        if not engine.alive:
            return JSONResponse({"status": "engine stopped"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(engine.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": defaults.model, "object": "model", "created": 0,
                                            "owned_by": "graphrt", "modes": list(MODES)}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = parse_body(CompletionRequest, await request.body())
        return await _serve("completion", decode_settings(body, defaults), {"prompt": completion_prompt(body)},
                            request)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = parse_body(ChatRequest, await request.body())
        return await _serve("chat", decode_settings(body, defaults), {"messages": chat_messages(body)}, request)

    async def _serve(kind: str, settings: Decode, prompt: dict[str, Any], request: Request) -> Response:
        policy = await asyncio.to_thread(engine.policy, settings.mode, settings.block_length, settings.threshold)
        try:
            _, ids, params = prepare(engine.model, mode=policy, **prompt, **settings.params)
        except ValueError as exc:
            raise RequestError(400, str(exc), _field_of(str(exc), next(iter(prompt)))) from None
        if not ids:
            raise RequestError(400, "prompt: expected at least one token, found an empty prompt", "prompt")
        engine.check_fits(policy, len(ids), params.max_new_tokens)
        job = Job(policy, ids, params, asyncio.get_running_loop())
        engine.submit(job)
        rid = responses.new_id(kind)
        try:
            if not settings.stream:
                result = await _collect(engine, job, request)
                build = responses.chat_body if kind == "chat" else responses.completion_body
                return JSONResponse(build(rid, defaults.model, result, tokenizer))
            first = await _next_event(engine, job, request)
        except ClientGone:
            return Response(status_code=499)
        if isinstance(first, Failed):
            raise first.error
        return StreamingResponse(_stream(engine, job, request, first, kind, rid, defaults.model, settings),
                                 media_type="text/event-stream")

    return app


def error_response(engine: Engine, error: RequestError) -> JSONResponse:
    """The JSON error response of ``error`` (counted in ``graphrt_http_errors``)."""
    engine.metrics.http_errors.labels(str(error.status)).inc()
    return JSONResponse(error.body(), status_code=error.status)


def parse_body(schema: type[BodyT], raw: bytes) -> BodyT:
    """Validate a request body (any content type) against ``schema``; a 400 naming the field otherwise."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"request body: expected a JSON object, found malformed JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RequestError(400, f"request body: expected a JSON object, found {type(data).__name__} {_short(data)}")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [f"[{p}]" if isinstance(p, int) else str(p) for p in err.get("loc", ())]
        where = ".".join(loc).replace(".[", "[")
        if err.get("type") == "value_error":  # the schema's own message says what it found
            message = str(err.get("ctx", {}).get("error", err.get("msg")))
        else:
            found = "nothing (the field is required)" if err.get("type") == "missing" else _short(err.get("input"))
            message = f"{err.get('msg')}; found {found}"
        raise RequestError(400, f"{where}: {message}", loc[0] if loc else None) from None


# GenerationParams' fields by the request fields that set them
_REQUEST_FIELDS = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens", "stop_strings": "stop",
                   "stop_token_ids": "stop"}


def _field_of(message: str, prompt_field: str) -> str:
    """The request field a ``ValueError`` of :func:`graphrt.api.prepare` is about."""
    head = message.split(":", 1)[0].removeprefix("GenerationParams.")
    if head in ("chat", "generate", "prompt"):
        return prompt_field
    return _REQUEST_FIELDS.get(head, head)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _warm_up(engine: Engine, defaults: Defaults) -> None:
    """Compile the default mode's policy before the first request."""
    engine.policy(defaults.mode, defaults.block_length, defaults.threshold)


async def _next_event(engine: Engine, job: Job, request: Request) -> Tokens | Finished | Failed:
    """The job's next event; cancels the job and raises ``ClientGone`` once its client has gone away.

    Asked after every event and every ``DISCONNECT_POLL_S`` without one: writes to a gone
    client do not fail, so a stream would otherwise run to its end unseen.
    """
    while True:
        try:
            event = await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
        except asyncio.TimeoutError:
            event = None
        if await request.is_disconnected():
            engine.cancel(job)
            raise ClientGone()
        if event is not None:
            return event


async def _collect(engine: Engine, job: Job, request: Request) -> Any:
    """Wait for the job's result (non-streamed requests)."""
    while True:
        event = await _next_event(engine, job, request)
        if isinstance(event, Finished):
            return event.result
        if isinstance(event, Failed):
            raise event.error


async def _stream(engine: Engine, job: Job, request: Request, first: Tokens | Finished, kind: str, rid: str,
                  model: str, settings: Decode) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format; the job is cancelled if the client goes away."""
    text = responses.TextStream(engine.model.tokenizer, settings.params["stop_strings"])
    done = False
    try:
        if kind == "chat":
            yield _sse(responses.chunk(kind, rid, model, "", role=True))
        event: Tokens | Finished | Failed = first
        while True:
            if isinstance(event, Tokens):
                delta = text.push(event.ids)
                if delta:
                    yield _sse(responses.chunk(kind, rid, model, delta))
            elif isinstance(event, Finished):
                done = True
                yield _sse(responses.chunk(kind, rid, model, text.finish(event.result) or None, finish=event.result))
                if settings.include_usage:
                    yield _sse(responses.usage_chunk(kind, rid, model, event.result))
                break
            else:
                done = True
                engine.metrics.http_errors.labels(str(event.error.status)).inc()
                yield _sse(event.error.body())
                break
            event = await _next_event(engine, job, request)
        yield "data: [DONE]\n\n"
    except ClientGone:
        pass
    finally:
        if not done:
            engine.cancel(job)


def _sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"

