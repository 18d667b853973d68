"""OpenAI response bodies and stream chunks, built from graphrt's results."""

from __future__ import annotations

import io
import time
import uuid
from typing import Any, Sequence

from graphrt.params import GenerationResult

FINISH_REASONS = {"stop": "stop", "stop_string": "stop", "end": "stop", "length": "length"}


def new_id(kind: str) -> str:
    """A response id: ``cmpl-...`` or ``chatcmpl-...``."""
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def usage(result: GenerationResult) -> dict[str, int]:
    """OpenAI's ``usage`` of a result."""
    n = len(result.tokens)
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": n, "total_tokens": result.prompt_tokens + n}


def stats(result: GenerationResult) -> dict[str, Any]:
    """graphrt's statistics of a result (the ``graphrt`` field of a response)."""
    out = {"mode": result.mode, "forwards": result.forwards, "tpf": result.tpf, "emit_sizes": result.emit_sizes,
           "seconds": result.seconds, "finish_reason": result.finish_reason}
    if result.cycle_info:  # mode auto: its choices per draft source
        from graphrt.frontends.policies.auto import summarize_cycles

        out["auto"] = summarize_cycles(result.cycle_info)
    return out


def _token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([i]) if tokenizer is not None else str(i) for i in ids]


def completion_logprobs(result: GenerationResult, tokenizer: Any) -> dict[str, Any] | None:
    """Completions' ``logprobs`` object (chosen tokens only: ``top_logprobs`` is null)."""
    if result.logprobs is None:
        return None
    texts = _token_texts(tokenizer, result.tokens)
    offsets, at = [], 0
    for t in texts:
        offsets.append(at)
        at += len(t)
    return {"tokens": texts, "token_logprobs": list(result.logprobs), "top_logprobs": None, "text_offset": offsets}


def chat_logprobs(result: GenerationResult, tokenizer: Any) -> dict[str, Any] | None:
    """Chat's ``logprobs`` object (chosen tokens only: empty ``top_logprobs``)."""
    if result.logprobs is None:
        return None
    return {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
                        for t, lp in zip(_token_texts(tokenizer, result.tokens), result.logprobs)]}


def completion_body(rid: str, model: str, result: GenerationResult, tokenizer: Any) -> dict[str, Any]:
    """The body of a (non-streamed) completion."""
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": result.text or "", "finish_reason": FINISH_REASONS[result.finish_reason],
                         "logprobs": completion_logprobs(result, tokenizer)}],
            "usage": usage(result), "graphrt": stats(result)}


def chat_body(rid: str, model: str, result: GenerationResult, tokenizer: Any) -> dict[str, Any]:
    """The body of a (non-streamed) chat completion."""
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text or ""},
                         "finish_reason": FINISH_REASONS[result.finish_reason],
                         "logprobs": chat_logprobs(result, tokenizer)}],
            "usage": usage(result), "graphrt": stats(result)}


def chunk(kind: str, rid: str, model: str, text: str | None, finish: GenerationResult | None = None,
          role: bool = False) -> dict[str, Any]:
    """One stream chunk: a text delta, the first chat chunk (``role``), or the last one (``finish``)."""
    reason = FINISH_REASONS[finish.finish_reason] if finish is not None else None
    if kind == "chat":
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
        body = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                "choices": [choice]}
    else:
        body = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}]}
    if finish is not None:
        body["graphrt"] = stats(finish)
    return body


def usage_chunk(kind: str, rid: str, model: str, result: GenerationResult) -> dict[str, Any]:
    """The extra last chunk of ``stream_options.include_usage``: no choices, the usage."""
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage(result)}


class TextStream:
    """The text deltas of a streamed request: ``graphrt generate``'s text stream, written into a buffer.

    What it sends is always a prefix of the result's text (an incomplete UTF-8
    character, and with stop strings the last ``len(longest stop) - 1``
    characters, wait for the next tokens); :meth:`finish` sends the rest.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str]) -> None:
        from graphrt.frontends.cli.generate import TextStream as Printer

        self._buffer = io.StringIO()
        self._printer = Printer(tokenizer, tuple(stops), out=self._buffer)
        self.sent = 0

    def push(self, ids: Sequence[int]) -> str:
        """Add a step's tokens; returns the text that is now safe to send."""
        self._printer(list(ids))
        text = self._buffer.getvalue()
        delta, self.sent = text[self.sent:], len(text)
        return delta

    def finish(self, result: GenerationResult) -> str:
        """The rest of the final text."""
        text = result.text or ""
        delta, self.sent = text[self.sent:], max(self.sent, len(text))
        return delta
