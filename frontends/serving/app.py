"""The FastAPI application: OpenAI's endpoints over an :class:`~graphrt.frontends.serving.engine.Engine`.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions``,
``GET /v1/models``, ``GET /health``, ``GET /metrics``. Every error is an
OpenAI-style JSON body ``{"error": {"message", "type", "param", "code"}}``.

Every request passes the :class:`~graphrt.frontends.serving.gate.Gate` first (host,
API key, drain, content type, body size). A request is then read, validated
(:func:`~graphrt.frontends.serving.protocol.check_request`: every range, before it
takes a cache row or a lock) and tokenized in a small thread pool of its own, never on
the event loop; it runs until its deadline (its ``timeout`` field, or the server's
``request_timeout``), after which it is cancelled, its row freed and its client told.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from graphrt.frontends.policies import MODES
from graphrt.frontends.serving import responses
from graphrt.frontends.serving.engine import Engine, Failed, Finished, Job, Tokens
from graphrt.frontends.serving.gate import Drain, Gate, GateConfig
from graphrt.api import prepare
from graphrt.frontends.serving.protocol import (ChatRequest, CompletionRequest, Decode, Defaults, Limits,
                                                RequestError, chat_messages, check_request, check_text_size,
                                                completion_prompt, decode_settings)

log = logging.getLogger("graphrt.serve")
BodyT = TypeVar("BodyT", bound=BaseModel)
DISCONNECT_POLL_S = 0.25  # how often a waiting handler checks that its client is still there
MAX_JSON_DEPTH = 32  # request bodies nested deeper are refused
PREPARE_WORKERS = 2  # threads that read, validate and tokenize requests (off the event loop)


class ClientGone(Exception):
    """The client disconnected while its request waited or ran."""


class DeadlineExceeded(Exception):
    """The request's deadline passed while it waited or ran."""


def limits_for(engine: Engine, **server_limits: Any) -> Limits:
    """The :class:`Limits` of the model ``engine`` serves, with the server's own maxima (``server_limits``)."""
    config = engine.model.config
    return Limits(config.vocab_size, config.max_positions, _longest_token_chars(engine.model.tokenizer),
                  **server_limits)


def create_app(engine: Engine, defaults: Defaults, limits: Limits | None = None, gate: GateConfig | None = None,
               drain: Drain | None = None) -> FastAPI:
    """The application serving ``engine`` under the model name ``defaults.model``.

    Parameters
    ----------
    engine, defaults:
        What serves requests, and what a request leaves out gets.
    limits:
        What one request may ask (default: :func:`limits_for` the engine's model).
    gate:
        Who may ask and what they may send (default: :class:`GateConfig`'s defaults).
    drain:
        The drain state a graceful shutdown sets (``app.state.drain``; a fresh one by default).
    """
    limits = limits or limits_for(engine)
    drain = drain or Drain()
    pool = ThreadPoolExecutor(PREPARE_WORKERS, thread_name_prefix="graphrt-prepare")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not engine.alive:
            engine.start()
        await asyncio.to_thread(_warm_up, engine, defaults)
        yield
        await asyncio.to_thread(engine.stop)
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="graphrt", lifespan=lifespan)
    app.state.engine, app.state.drain, app.state.limits = engine, drain, limits
    app.add_middleware(Gate, config=gate or GateConfig(), drain=drain,
                       on_refusal=lambda status: engine.metrics.http_errors.labels(str(status)).inc())
    tokenizer = engine.model.tokenizer

    async def off_loop(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

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
        if drain.draining:
            return JSONResponse({"status": "draining"}, status_code=503,
                                headers={"Retry-After": str(drain.retry_after_s)})
        problem = engine.stalled
        if problem is not None:
            return JSONResponse({"status": problem}, status_code=503)
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
        return await _serve("completion", request)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await _serve("chat", request)

    async def _serve(kind: str, request: Request) -> Response:
        arrived = time.monotonic()
        settings, prompt = await off_loop(read_request, kind, await request.body(), defaults, limits)
        policy = await asyncio.to_thread(engine.policy, settings.mode, settings.block_length, settings.threshold)
        ids, params = await off_loop(tokenize, engine, policy, prompt, settings)
        engine.check_fits(policy, len(ids), params.max_new_tokens)
        timeout = settings.timeout if settings.timeout is not None else limits.request_timeout
        job = Job(policy, ids, params, asyncio.get_running_loop(),
                  key=(settings.mode, settings.block_length, settings.threshold), deadline=arrived + timeout)
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
        except DeadlineExceeded:
            raise deadline_error(timeout) from None
        if isinstance(first, Failed):
            raise first.error
        return StreamingResponse(_stream(engine, job, request, first, kind, rid, defaults.model, settings, timeout),
                                 media_type="text/event-stream")

    return app


def read_request(kind: str, raw: bytes, defaults: Defaults, limits: Limits) -> tuple[Decode, dict[str, Any]]:
    """Parse and check a request body: its :class:`Decode` and its prompt (``prompt=`` or ``messages=``).

    Raises
    ------
    RequestError
        Anything wrong with it (400 naming the field; 404 for another model), checked before the
        request takes a cache row or a lock.
    """
    body = parse_body(ChatRequest if kind == "chat" else CompletionRequest, raw)
    settings = decode_settings(body, defaults)
    check_request(body, limits)
    if isinstance(body, ChatRequest):
        messages = chat_messages(body)
        check_text_size(sum(len(m["content"]) for m in messages), limits, "messages")
        return settings, {"messages": messages}
    return settings, {"prompt": completion_prompt(body)}


def tokenize(engine: Engine, policy: Any, prompt: dict[str, Any], settings: Decode) -> tuple[list[int], Any]:
    """The prompt's token ids (chat template applied) and the request's generation parameters."""
    try:
        _, ids, params = prepare(engine.model, mode=policy, **prompt, **settings.params)
    except ValueError as exc:
        raise RequestError(400, str(exc), _field_of(str(exc), next(iter(prompt)))) from None
    if not ids:
        raise RequestError(400, "prompt: expected at least one token, found an empty prompt", "prompt")
    return ids, params


def deadline_error(timeout: float) -> RequestError:
    """The error of a request whose deadline passed."""
    return RequestError(504, f"timeout: expected the request to finish within {timeout:g} s (its timeout, or this "
                             f"server's --request-timeout), found it unfinished then; it was cancelled",
                        "timeout", kind="timeout_error", code="deadline_exceeded")


def error_response(engine: Engine, error: RequestError) -> JSONResponse:
    """The JSON error response of ``error`` (counted in ``graphrt_http_errors``)."""
    engine.metrics.http_errors.labels(str(error.status)).inc()
    # a body refused half-read leaves the rest on the connection: close it
    headers = {"Connection": "close"} if error.status in (408, 413) else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def parse_body(schema: type[BodyT], raw: bytes) -> BodyT:
    """Validate a request body against ``schema``; a 400 naming the field otherwise.

    The body must be a JSON object nested at most :data:`MAX_JSON_DEPTH` deep whose strings are
    text (no lone surrogate escapes such as ``"\\ud800"``); floats must be finite.
    """
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"request body: expected a JSON object, found malformed JSON ({exc})") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise RequestError(400, f"request body: expected numbers of at most 4300 digits, found longer ({exc})") \
            from None
    except RecursionError:
        raise RequestError(400, f"request body: expected JSON nested at most {MAX_JSON_DEPTH} deep, found "
                                f"deeper") from None
    _check_json(data)
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


def _check_json(data: Any) -> None:
    """Refuse (400) JSON nested deeper than :data:`MAX_JSON_DEPTH` or holding a string that is not text."""
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    while stack:
        value, depth, where = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise RequestError(400, f"{where or 'request body'}: expected JSON nested at most {MAX_JSON_DEPTH} "
                                    f"deep, found deeper", _param_of(where))
        if isinstance(value, str):
            _check_text(value, where)
        elif isinstance(value, dict):
            for k, v in value.items():
                _check_text(k, where, "a key")
                stack.append((v, depth + 1, f"{where}.{k}" if where else k))
        elif isinstance(value, list):
            stack.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(value))


def _check_text(text: str, where: str, what: str = "text") -> None:
    """Refuse (400) a string holding a lone surrogate (``where``: its JSON path, whose keys are checked)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(400, f"{where or 'request body'}: expected {what} of Unicode characters, found the lone "
                                f"surrogate {text[exc.start]!r} at character {exc.start}", _param_of(where)) from None


def _param_of(where: str) -> str | None:
    """The top-level request field of a JSON path (``messages[0].content`` -> ``messages``)."""
    return where.split(".", 1)[0].split("[", 1)[0] or None


def _longest_token_chars(tokenizer: Any) -> int:
    """An upper bound on the characters one token decodes to (its vocabulary's longest entry: a byte-level
    entry has a character per byte); 64 when the tokenizer does not say."""
    vocab = getattr(getattr(tokenizer, "hf", None), "get_vocab", None)
    try:
        return max(8, max(len(token) for token in vocab())) if vocab is not None else 64
    except Exception:  # noqa: BLE001 - any tokenizer without a readable vocabulary
        return 64


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _warm_up(engine: Engine, defaults: Defaults) -> None:
    """Compile the default mode's policy before the first request."""
    engine.policy(defaults.mode, defaults.block_length, defaults.threshold)


async def _next_event(engine: Engine, job: Job, request: Request) -> Tokens | Finished | Failed:
    """The job's next event; cancels the job and raises ``ClientGone`` once its client has gone away,
    ``DeadlineExceeded`` once its deadline has passed.

    Asked after every event and every ``DISCONNECT_POLL_S`` without one: writes to a gone
    client do not fail, so a stream would otherwise run to its end unseen.
    """
    while True:
        left = job.deadline - time.monotonic()
        if left <= 0:
            engine.cancel(job)
            raise DeadlineExceeded()
        try:
            event = await asyncio.wait_for(job.events.get(), min(DISCONNECT_POLL_S, left))
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
                  model: str, settings: Decode, timeout: float) -> AsyncIterator[str]:
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
            try:
                event = await _next_event(engine, job, request)
            except DeadlineExceeded:
                done = True  # cancelled by _next_event
                error = deadline_error(timeout)
                engine.metrics.http_errors.labels(str(error.status)).inc()
                yield _sse(error.body())
                break
        yield "data: [DONE]\n\n"
    except ClientGone:
        pass
    finally:
        if not done:
            engine.cancel(job)


def _sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"

