"""One request driven round by round: tokens streamed as committed, and an optional trace."""

from __future__ import annotations

from typing import Callable, Sequence

from graphrt.api import Model
from graphrt.compiled import CompiledPolicy
from graphrt.params import GenerationParams, GenerationResult
from graphrt.session import Session

from graphrt.frontends.cli.trace import DecodeTrace, TracingBackbone, record_labels


def stream_generate(model: Model, compiled: CompiledPolicy, prompt: Sequence[int], params: GenerationParams,
                    on_tokens: Callable[[list[int]], None] | None = None,
                    trace: bool = False) -> tuple[GenerationResult, DecodeTrace | None]:
    """Run one request with :meth:`Session.step`, calling ``on_tokens`` with each round's new tokens.

    Parameters
    ----------
    model:
        From :func:`graphrt.load`.
    compiled, prompt, params:
        What :func:`graphrt.api.prepare` returns.
    on_tokens:
        Called after every round that emitted tokens (already cut at budgets and stops).
    trace:
        Record every forward and return a :class:`~graphrt.frontends.cli.trace.DecodeTrace`.

    Returns
    -------
    (result, trace or None)
    """
    backbone = TracingBackbone(model.backbone) if trace else model.backbone
    session = Session(backbone, model.tokenizer)
    rid = session.add(compiled, prompt, params)
    emitted: list[list[int]] = []
    while session.has_work:
        new = session.step().get(rid, [])
        emitted.append(new)
        if new and on_tokens is not None:
            on_tokens(new)
    result = session.result(rid)
    if not trace:
        return result, None
    assert isinstance(backbone, TracingBackbone)
    (row,) = backbone.records or {0: []}
    rec = DecodeTrace(result.mode, len(prompt), model.config.mask_token_id, backbone.records.get(row, []),
                      emitted, result.tokens, cycle_info=list(result.cycle_info))
    if model.tokenizer is not None:
        record_labels(rec, model.tokenizer)
    return result, rec
