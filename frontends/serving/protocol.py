"""OpenAI request bodies: their schema, and their translation into graphrt's parameters.

The bodies are pydantic models in strict mode (``"3"`` is not an int, ``true``
is not a number) that forbid unknown fields, so a misspelt knob is a 400 that
names it rather than a silently ignored setting. Every integer field must fit
int64 and every float be finite; :func:`check_request` then checks what depends on
the model and the server (:class:`Limits`: vocabulary, positions, maxima) before a
request reaches the engine. graphrt's own knobs are extra
body fields (the ``openai`` client's ``extra_body``): ``mode``,
``block_length``, ``threshold``, ``thinking_budget``, ``end_think_token_id``,
``top_k``, ``min_tokens``, ``ignore_eos``, ``timeout``. OpenAI fields graphrt does not
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
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1  # every integer field must fit the int64 tensors it becomes


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
    """Fields shared by completions and chat completions (integers within int64, floats finite)."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    model: str
    max_tokens: int | None = Field(default=None, gt=0, le=INT64_MAX)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
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
    block_length: int | None = Field(default=None, gt=0, le=INT64_MAX)
    threshold: float | None = Field(default=None, ge=0, le=1)
    thinking_budget: int | None = Field(default=None, ge=0, le=INT64_MAX)
    end_think_token_id: int | None = Field(default=None, ge=0, le=INT64_MAX)
    top_k: int = Field(default=0, ge=0, le=INT64_MAX)
    min_tokens: int = Field(default=0, ge=0, le=INT64_MAX)
    ignore_eos: bool = False
    timeout: float | None = Field(default=None, gt=0)  # seconds from arrival to the last token

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
    logprobs: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)

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
    top_logprobs: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    max_completion_tokens: int | None = Field(default=None, gt=0, le=INT64_MAX)

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
    timeout: float | None = None


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
                  params, req.stream, include_usage, req.timeout)


def _fresh_seed() -> int:
    import secrets

    return secrets.randbits(31)


@dataclass(frozen=True)
class Limits:
    """What one request may ask of a server: the model's ranges and the server's own maxima.

    Parameters
    ----------
    vocab_size, max_positions:
        The model's (token ids, ``top_k``, ``end_think_token_id``; prompt length, ``block_length``,
        ``thinking_budget``).
    max_token_chars:
        The longest text one token stands for (a text prompt longer than ``max_positions`` of them
        cannot fit, and is refused before it is tokenized).
    max_tokens:
        The largest ``max_tokens`` (``None``: what fits the model).
    max_messages:
        The most chat messages in one request.
    request_timeout:
        The longest (and default) ``timeout`` of a request, in seconds.
    """

    vocab_size: int
    max_positions: int
    max_token_chars: int = 64
    max_tokens: int | None = None
    max_messages: int = 256
    request_timeout: float = 600.0

    @property
    def max_prompt_chars(self) -> int:
        """The longest prompt text (characters, all messages together) that may still fit the model."""
        return self.max_positions * self.max_token_chars


def check_request(req: CompletionRequest | ChatRequest, limits: Limits) -> None:
    """Check the fields whose ranges depend on the model or the server (after the schema's own checks).

    Raises
    ------
    RequestError
        400 naming the field: a token id outside the vocabulary, a length beyond the model's
        positions, a value above a server maximum.
    """
    vocab, positions = limits.vocab_size, limits.max_positions
    _at_most(req.top_k, vocab, "top_k", f"the vocabulary's {vocab} tokens; 0 disables")
    if req.end_think_token_id is not None and req.end_think_token_id >= vocab:
        raise RequestError(400, f"end_think_token_id: expected a token id in [0, {vocab}) (the vocabulary), found "
                                f"{req.end_think_token_id}", "end_think_token_id")
    _at_most(req.block_length, positions, "block_length", "the model's positions")
    _at_most(req.thinking_budget, positions, "thinking_budget", "the model's positions")
    for name in ("max_tokens", "max_completion_tokens"):
        if limits.max_tokens is not None:  # (the model's own bound: Engine.check_fits, after tokenizing)
            _at_most(getattr(req, name, None), limits.max_tokens, name, "this server's --max-tokens")
    if req.timeout is not None and req.timeout > limits.request_timeout:
        raise RequestError(400, f"timeout: expected at most {limits.request_timeout:g} s (this server's "
                                f"--request-timeout), found {req.timeout:g}", "timeout")
    if isinstance(req, ChatRequest):
        if len(req.messages) > limits.max_messages:
            raise RequestError(400, f"messages: expected at most {limits.max_messages} messages (this server's "
                                    f"--max-messages), found {len(req.messages)}", "messages")
        return
    prompt = req.prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one (longer batches are refused by completion_prompt)
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        where = "prompt" if prompt is req.prompt else "prompt[0]"
        if len(prompt) >= positions:
            raise RequestError(400, f"{where}: expected at most {positions - 1} tokens (the model has {positions} "
                                    f"positions), found {len(prompt)}", "prompt", code="context_length_exceeded")
        for i, t in enumerate(prompt):
            if not 0 <= t < vocab:
                raise RequestError(400, f"{where}[{i}]: expected a token id in [0, {vocab}), found {t}, outside "
                                        f"the vocabulary", "prompt")
    elif isinstance(prompt, str):
        check_text_size(len(prompt), limits, "prompt")


def check_text_size(chars: int, limits: Limits, where: str) -> None:
    """Refuse (400) prompt text too long to fit the model whatever its tokens (checked before tokenizing)."""
    if chars > limits.max_prompt_chars:
        raise RequestError(400, f"{where}: expected at most {limits.max_prompt_chars} characters (the model's "
                                f"{limits.max_positions} positions of at most {limits.max_token_chars} characters "
                                f"each), found {chars}", where.split("[", 1)[0].split(".", 1)[0],
                           code="context_length_exceeded")


def _at_most(value: int | None, bound: int, name: str, what: str) -> None:
    if value is not None and value > bound:
        raise RequestError(400, f"{name}: expected at most {bound} ({what}), found {value}", name)
