"""OpenAI request bodies: their schema, and their translation into graphrt's parameters.

The bodies are pydantic models in strict mode (``"3"`` is not an int, ``true``
is not a number) that forbid unknown fields, so a misspelt knob is a 400 that
names it rather than a silently ignored setting. graphrt's own knobs are extra
body fields (the ``openai`` client's ``extra_body``): ``mode``,
``block_length``, ``threshold``, ``thinking_budget``, ``end_think_token_id``,
``top_k``, ``min_tokens``, ``ignore_eos``. OpenAI fields graphrt does not
implement are accepted only at their neutral value (``n=1``, ``echo=false``,
penalties 0, ...), otherwise the answer is a 400 that says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from graphrt.frontends.policies import MODES

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions; used for chat too
MAX_STOP_STRINGS = 4     # OpenAI's limit


# OpenAI request fields graphrt accepts only at their no-op value: field -> (is it the no-op, the error).
NO_OP_ONLY: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (lambda v: v == 1, "graphrt returns one choice per request: expected 1, found {v}"),
    "presence_penalty": (lambda v: v == 0, "penalties are not implemented: expected 0, found {v}"),
    "frequency_penalty": (lambda v: v == 0, "penalties are not implemented: expected 0, found {v}"),
    "logit_bias": (lambda v: not v, "logit_bias is not implemented: expected null or {{}}, found a non-empty map"),
    "logprobs": (lambda v: v in (None, 0), "graphrt returns the chosen token's log-probability only: expected 0 "
                                           "or null (no alternatives), found {v}"),
    "top_logprobs": (lambda v: v in (None, 0), "graphrt returns the chosen token's log-probability only: "
                                               "expected 0 or null, found {v}"),
    "echo": (lambda v: not v, "echo is not implemented: expected false, found true"),
    "suffix": (lambda v: not v, "suffix (insertion) is not implemented: expected null"),
    "best_of": (lambda v: v in (None, 1), "graphrt returns one choice per request: expected 1 or null, found {v}"),
}


def no_op_only(value: Any, field: str) -> Any:
    """``value`` of request field ``field`` if it is the field's no-op (see :data:`NO_OP_ONLY`).

    Raises
    ------
    ValueError
        Another value: graphrt does not implement what it asks for.
    """
    accepted, message = NO_OP_ONLY[field]
    if not accepted(value):
        raise ValueError(message.format(v=value))
    return value


class RequestError(ValueError):
    """A request the server refuses, answered as an OpenAI-style JSON error.

    Parameters
    ----------
    status:
        HTTP status (400, 404, 429, 500, ...).
    message:
        What was expected, what was found, and where.
    param:
        The request field at fault, when there is one.
    kind:
        OpenAI's error ``type`` (``invalid_request_error``, ...).
    """

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the usage."""

    model_config = ConfigDict(strict=True, extra="forbid")
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(strict=True, extra="forbid")

    model: str
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = None
    stop: Union[str, list[str], None] = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    # graphrt's knobs (extra body fields)
    mode: Literal[MODES] | None = None  # type: ignore[valid-type]
    block_length: int | None = Field(default=None, gt=0)
    threshold: float | None = Field(default=None, ge=0, le=1)
    thinking_budget: int | None = Field(default=None, ge=0)
    end_think_token_id: int | None = Field(default=None, ge=0)
    top_k: int = Field(default=0, ge=0)
    min_tokens: int = Field(default=0, ge=0)
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > MAX_STOP_STRINGS:
            raise ValueError(f"expected at most {MAX_STOP_STRINGS} stop strings, found {len(items)}")
        if any(s == "" for s in items):
            raise ValueError("expected non-empty stop strings, found an empty string")
        return v

    @field_validator("n", "presence_penalty", "frequency_penalty", "logit_bias")
    @classmethod
    def _sampling_no_ops(cls, v: Any, info: ValidationInfo) -> Any:
        return no_op_only(v, info.field_name)

class CompletionRequest(_Sampling):
    """``POST /v1/completions``: one prompt (text, or token ids)."""

    prompt: Union[str, list[int], list[str], list[list[int]]]
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("logprobs", "echo", "suffix", "best_of")
    @classmethod
    def _completion_no_ops(cls, v: Any, info: ValidationInfo) -> Any:
        return no_op_only(v, info.field_name)

class ChatMessage(BaseModel):
    """One chat message; ``content`` is text or a list of text parts."""

    model_config = ConfigDict(strict=True, extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[dict[str, Any]], None] = None

    def text(self, where: str) -> str:
        """The message's text (text parts joined); ``RequestError`` naming ``where`` otherwise."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for i, part in enumerate(self.content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(400, f"{where}.content[{i}]: expected a text part {{'type': 'text', 'text': ...}}, "
                                        f"found {str(part)[:80]}", f"{where}.content")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = None
    max_completion_tokens: int | None = Field(default=None, gt=0)

    @field_validator("top_logprobs")
    @classmethod
    def _chat_no_ops(cls, v: Any, info: ValidationInfo) -> Any:
        return no_op_only(v, info.field_name)

@dataclass(frozen=True)
class Defaults:
    """The server's defaults for what a request leaves out."""

    model: str
    mode: str = "ar"
    block_length: int | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class Decode:
    """A request translated: which policy, which generation parameters, how to answer.

    ``params`` are keyword arguments of :func:`graphrt.api.prepare` (the fields of
    :class:`~graphrt.GenerationParams`), so a served request runs exactly what
    offline ``graphrt.generate`` runs.
    """

    mode: str
    block_length: int | None
    threshold: float | None
    params: dict[str, Any]
    stream: bool
    include_usage: bool


def completion_prompt(req: CompletionRequest) -> str | list[int]:
    """A completion request's single prompt (text or token ids)."""
    p = req.prompt
    if isinstance(p, list) and p and isinstance(p[0], (str, list)):
        if len(p) != 1:
            raise RequestError(400, f"prompt: graphrt takes one prompt per request, found a batch of {len(p)}",
                               "prompt")
        p = p[0]
    if not p:
        raise RequestError(400, "prompt: expected at least one token, found an empty prompt", "prompt")
    return p  # type: ignore[return-value]


def chat_messages(req: ChatRequest) -> list[dict[str, str]]:
    """A chat request's messages as ``{"role", "content"}`` dicts of text."""
    return [{"role": m.role, "content": m.text(f"messages[{i}]")} for i, m in enumerate(req.messages)]


def decode_settings(req: CompletionRequest | ChatRequest, defaults: Defaults) -> Decode:
    """Translate a validated body into a :class:`Decode` (mode, knobs, generation parameters).

    Raises
    ------
    RequestError
        404 for an unknown model; 400 for combinations of fields that do not go together.
    """
    if req.model != defaults.model:
        raise RequestError(404, f"model: this server serves {defaults.model!r}, found {req.model!r}", "model",
                           code="model_not_found")
    if req.stream and isinstance(req, ChatRequest) and req.logprobs or \
            req.stream and isinstance(req, CompletionRequest) and req.logprobs is not None:
        raise RequestError(400, "logprobs: not available with stream=true; ask without streaming", "logprobs")
    max_tokens = req.max_tokens
    if isinstance(req, ChatRequest) and req.max_completion_tokens is not None:
        max_tokens = req.max_completion_tokens
    max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    if req.min_tokens > max_tokens:
        raise RequestError(400, f"min_tokens: expected at most max_tokens ({max_tokens}), found {req.min_tokens}",
                           "min_tokens")
    if req.end_think_token_id is not None and req.thinking_budget is None:
        raise RequestError(400, "end_think_token_id: expected together with thinking_budget", "end_think_token_id")
    stops = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    logprobs = req.logprobs is not None if isinstance(req, CompletionRequest) else req.logprobs
    params = {"max_new_tokens": max_tokens, "min_new_tokens": req.min_tokens, "temperature": float(req.temperature),
              "top_k": req.top_k, "top_p": float(req.top_p),
              "seed": req.seed if req.seed is not None else _fresh_seed(), "stop_strings": stops,
              "ignore_eos": req.ignore_eos, "logprobs": bool(logprobs), "thinking_budget": req.thinking_budget,
              "end_think_token_id": req.end_think_token_id}
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    if req.stream_options is not None and not req.stream:
        raise RequestError(400, "stream_options: only allowed with stream=true", "stream_options")
    return Decode(req.mode or defaults.mode,
                  req.block_length if req.block_length is not None else defaults.block_length,
                  req.threshold if req.threshold is not None else defaults.threshold,
                  params, req.stream, include_usage)


def _fresh_seed() -> int:
    import secrets

    return secrets.randbits(31)
