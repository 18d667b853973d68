"""The session: many requests, of any modes, sharing backbone calls.

Each round (:meth:`Session.step`) admits waiting requests whose cache row is
free, collects the pending one-row :class:`~graphrt.backbone.ForwardBatch` of
every active request, packs them into one backbone call (every attention kind is a
per-row boolean mask, so rows of different modes share a call), and resumes
each request with its slice of the logits until it suspends again. A call is
padded to its widest row; with ``split_calls`` (servers), where the cost model
prices it, a round whose forwards differ widely in width (a prompt joining rows
that decode a token each) runs as two calls, the narrow forwards and the wide
ones. Emitted tokens are checked against the request's budget and stops here;
a finished request frees its row.

This is the step-level API for engines: ``add`` a request, call ``step`` from
your scheduler, read ``poll``/``result``, ``cancel`` at will.

Adaptive policies (:mod:`graphrt.adaptive`) declare two more graph inputs that
the session fills live: ``cost``, the backbone's call-time coefficients from
the session's :class:`~graphrt.cost_model.CostModel` (refreshed by the call
times it observes: every call on a host device, on CUDA while such a request
is active, as timing synchronises), and ``load``, per request,
the *other* requests' share of the round (:data:`graphrt.adaptive.LOAD_FIELDS`).
What an ``emit`` reports in its ``info`` input is kept per request
(:attr:`~graphrt.params.GenerationResult.cycle_info`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import torch

from graphrt.backbone import Backbone, ForwardBatch, row_logits
from graphrt.compiled import CompiledPolicy
from graphrt.cost_model import CostModel, call_shape, for_model
from graphrt.events import CacheCrop, CacheHandle, Emission, Event
from graphrt.executor import Program
from graphrt.params import GenerationParams, GenerationResult


class TokenizerLike(Protocol):
    """What the session needs from a tokenizer (stop strings, text output)."""

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str: ...


@dataclass
class _Request:
    id: int
    policy: CompiledPolicy
    prompt: torch.Tensor
    params: GenerationParams
    row: int = -1
    program: Program | None = None
    pending: ForwardBatch | None = None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    emit_sizes: list[int] = field(default_factory=list)
    forwards: int = 0
    finish_reason: str = ""
    started: float = 0.0
    seconds: float = 0.0
    new: list[int] = field(default_factory=list)
    force_pos: torch.Tensor | None = None
    load: torch.Tensor | None = None  # [4] the others' share of the round (adaptive policies only)
    cycle_info: list[tuple[int, ...]] = field(default_factory=list)
    committed: int = 0  # tokens emitted in the current round
    committed_before: int = 0  # ... and in the round before


class Session:
    """Active requests over one backbone.

    Parameters
    ----------
    backbone:
        Any :class:`~graphrt.backbone.Backbone`.
    tokenizer:
        Optional; needed for stop strings and ``text`` in results.
    row_capacity:
        Cache slots per row (defaults to ``backbone.config.max_positions`` plus the
        largest policy overshoot admitted; the backbone must provide them).
    cost_model:
        The backbone's measured call times (:mod:`graphrt.cost_model`), read by adaptive
        policies. Default: the first time a request whose policy reads them is admitted into an
        idle session, :func:`~graphrt.cost_model.for_model` gives the cached calibration of this
        backbone, or calibrates one (about 2 s, once per machine, model and thread count, saved);
        where that fails, an unmeasured model that learns from the calls it observes. A model given
        here or assigned later (``session.cost_model = ...``) is used as it is, and a tensor-parallel
        backbone (``backbone.tp > 1``) is never calibrated here: its ranks, each timing its own calls,
        would run different calls and fall out of step.
    split_calls:
        Whether a round may run as two calls where the cost model prices that below one
        padded call (what a server wants). Off by default: the split follows measured
        times, so which rows share a call, and with it the float rounding of their logits,
        would vary from run to run; and the ranks of a tensor-parallel engine, each timing
        its own calls, must make the same calls.
    """

    def __init__(self, backbone: Backbone, tokenizer: TokenizerLike | None = None,
                 row_capacity: int | None = None, cost_model: CostModel | None = None,
                 split_calls: bool = False) -> None:
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.config = backbone.config
        self.row_capacity = row_capacity
        self.device = _backbone_device(backbone)
        self.backbone_calls = 0
        self._cost_model = cost_model if cost_model is not None else CostModel()
        self._cost_sought = cost_model is not None  # a model given (here or later) is used as it is
        self.split_calls = split_calls
        self._adaptive = 0  # active requests whose policy reads cost/load
        self._next_id = 0
        self._waiting: list[_Request] = []
        self._active: dict[int, _Request] = {}
        self._done: dict[int, _Request] = {}

    # ------------------------------------------------------------------ public API
    @property
    def cost_model(self) -> CostModel:
        """The backbone's call times the session prices adaptive choices and round splits with (see the class
        docstring); assigning one makes the session use it as it is, never calibrating on its own."""
        return self._cost_model

    @cost_model.setter
    def cost_model(self, model: CostModel) -> None:
        self._cost_model = model
        self._cost_sought = True

    def add(self, policy: CompiledPolicy, prompt: Sequence[int] | torch.Tensor,
            params: GenerationParams | None = None) -> int:
        """Queue a request; returns its id. Validates everything before anything runs.

        Raises ``ValueError`` for an empty prompt, token ids outside the vocabulary,
        or a prompt whose length plus ``max_new_tokens`` exceeds the model's positions
        (or the cache row capacity).
        """
        params = params or GenerationParams()
        ids = torch.as_tensor(prompt, dtype=torch.int64).flatten()
        if ids.numel() == 0:
            raise ValueError("prompt: expected at least one token, found an empty prompt")
        vocab = self.config.vocab_size
        bad = ((ids < 0) | (ids >= vocab)).nonzero()
        if bad.numel():
            i = int(bad[0, 0])
            raise ValueError(f"prompt: token id {int(ids[i])} at index {i} is outside the vocabulary [0, {vocab})")
        need = ids.numel() + params.max_new_tokens
        if need > self.config.max_positions:
            raise ValueError(f"prompt of {ids.numel()} tokens + max_new_tokens {params.max_new_tokens} = {need} "
                             f"exceeds the model's {self.config.max_positions} positions")
        capacity = self.row_capacity or getattr(self.backbone, "row_capacity", None)
        if capacity is not None and need + policy.overshoot > capacity:
            raise ValueError(f"request needs {need} + {policy.overshoot} (the {policy.name} policy's last-block "
                             f"slack) cache slots, but a cache row holds {capacity}: it can never be admitted")
        req = _Request(self._next_id, policy, ids.to(self.device), params)
        self._next_id += 1
        self._waiting.append(req)
        return req.id

    def cancel(self, request_id: int) -> None:
        """Stop a request now; its result keeps what was emitted so far."""
        for req in self._waiting:
            if req.id == request_id:
                self._waiting.remove(req)
                req.finish_reason = "cancelled"
                self._done[req.id] = req
                return
        req = self._active.get(request_id)
        if req is None:
            if request_id in self._done:
                return
            raise KeyError(f"cancel: no request with id {request_id}")
        self._finish(req, "cancelled")

    @property
    def has_work(self) -> bool:
        """Whether any request is waiting or active."""
        return bool(self._waiting or self._active)

    def step(self) -> dict[int, list[int]]:
        """One round: admit, run one packed backbone call, resume everyone.

        Returns the tokens each request emitted (after cuts) during this round.
        """
        self._admit()
        pending = sorted((r for r in self._active.values() if r.pending is not None), key=lambda r: r.row)
        if pending and self._adaptive:  # a new round: what each request committed in the last one
            for req in self._active.values():
                req.committed_before, req.committed = req.committed, 0
        for batch_reqs in self._calls(pending):
            logits = self._forward(batch_reqs)  # [B, L, V], or narrower: the tokens the requests want
            width = max(r.pending.tokens.shape[1] for r in batch_reqs)  # type: ignore[union-attr]
            for i, req in enumerate(batch_reqs):
                req.forwards += 1
                n = req.pending.tokens.shape[1]  # type: ignore[union-attr]
                x = row_logits(logits, width, i, n, req.pending.logits == "last")  # type: ignore[union-attr]
                req.pending = None
                self._drive(req, lambda r=req, x=x: r.program.resume(x))  # type: ignore[union-attr]
        out: dict[int, list[int]] = {}
        for req in list(self._active.values()) + list(self._done.values()):
            if req.new:
                out[req.id], req.new = req.new, []
        return out

    def run(self) -> dict[int, GenerationResult]:
        """Step until every request is finished; returns all results by id."""
        while self.has_work:
            self.step()
        return {rid: self.result(rid) for rid in self._done}

    def poll(self, request_id: int) -> list[int]:
        """The tokens a request has emitted so far (after cuts), whether it waits, runs or has finished."""
        for req in self._waiting:
            if req.id == request_id:
                return []
        req = self._active.get(request_id) or self._done.get(request_id)
        if req is None:
            raise KeyError(f"poll: no request with id {request_id}")
        return list(req.tokens)

    def done(self, request_id: int) -> bool:
        """Whether the request has finished."""
        return request_id in self._done

    def result(self, request_id: int) -> GenerationResult:
        """The result of a finished request."""
        req = self._done.get(request_id)
        if req is None:
            raise KeyError(f"result: request {request_id} is not finished (or does not exist)")
        text = self.tokenizer.decode(req.tokens, skip_special=True) if self.tokenizer is not None else None
        if text is not None and req.finish_reason == "stop_string":
            text = _cut_at_stop_string(text, req.params.stop_strings)
        return GenerationResult(
            tokens=list(req.tokens), text=text, forwards=req.forwards, seconds=req.seconds,
            finish_reason=req.finish_reason, mode=req.policy.name, prompt_tokens=int(req.prompt.numel()),
            emit_sizes=list(req.emit_sizes), logprobs=list(req.logprobs) if req.params.logprobs else None,
            cycle_info=list(req.cycle_info))

    def release(self, request_id: int) -> GenerationResult:
        """Return a finished request's result and forget the request (a long-running server calls
        this for every request, so the session's memory does not grow with the requests it served).

        Raises
        ------
        KeyError
            The request is not finished (or does not exist, or was released already).
        """
        result = self.result(request_id)
        del self._done[request_id]
        return result

    # ------------------------------------------------------------------ internals
    def _reads_cost(self, req: "_Request") -> bool:
        """Whether ``req``'s policy reads the cost model (an adaptive policy)."""
        return any(v.name == "cost" for v in req.policy.lowered(self.device).graph.inputs)

    def _admit(self) -> None:
        if (not self._cost_sought and not self._active and getattr(self.backbone, "tp", 1) == 1
                and any(self._reads_cost(r) for r in self._waiting)):  # (tensor-parallel ranks: see cost_model)
            self._cost_sought = True  # once: the rows are all free now, and a failed calibration is not retried
            if not self._cost_model.points:  # no calibration (its own timings of a few shapes do not count)
                self.cost_model = for_model(self.backbone)
        while self._waiting and self.backbone.free_row_count() > 0:
            req = self._waiting.pop(0)
            req.row = self.backbone.alloc_rows(1)[0]
            self.backbone.crop(req.row, 0)
            req.started = time.perf_counter()
            p = req.params
            dev = self.device
            inputs: dict[str, Any] = {
                "prompt": req.prompt, "cache": CacheHandle(req.row),
                "seed": torch.tensor(p.seed, dtype=torch.int64, device=dev),
                "stream": torch.tensor(p.stream, dtype=torch.int64, device=dev),
                "temperature": torch.tensor(float(p.temperature), dtype=torch.float64, device=dev),
                "top_k": torch.tensor(p.top_k, dtype=torch.int64, device=dev),
                "top_p": torch.tensor(float(p.top_p), dtype=torch.float64, device=dev),
                "force_pos": torch.tensor(-1 if p.thinking_budget is None else req.prompt.numel() + p.thinking_budget,
                                          dtype=torch.int64, device=dev),
                "force_id": torch.tensor(-1 if p.end_think_token_id is None else p.end_think_token_id,
                                         dtype=torch.int64, device=dev),
            }
            req.force_pos = inputs["force_pos"]
            lowered = req.policy.lowered(dev)
            declared = {v.name for v in lowered.graph.inputs}
            if "cost" in declared:  # host tensors, read on the host by the op that chooses
                inputs["cost"] = self.cost_model.tensor
            if "load" in declared:
                req.load = inputs["load"] = torch.zeros(4, dtype=torch.float64)
                self._adaptive += 1
            req.program = Program(lowered, inputs, logprobs=p.logprobs)
            self._active[req.id] = req
            self._drive(req, req.program.start)

    def _drive(self, req: _Request, resume: Any) -> None:
        """Advance a request until it waits for a forward or finishes.

        The one protocol of :mod:`graphrt.events`: at every suspension (and at the end) the
        program's outbox is read first, so a request whose budget or stop an emission reaches
        finishes there, before the forward or crop it suspended at runs.
        """
        program = req.program
        event: Event | None = resume()
        while True:
            if program.outbox:  # type: ignore[union-attr]
                emits, program.outbox[:] = list(program.outbox), []  # type: ignore[union-attr]
                for emit in emits:
                    if self._on_emit(req, emit):
                        self._finish(req, req.finish_reason)
                        return
            if event is None:
                self._finish(req, req.finish_reason or "end")
                return
            if isinstance(event, ForwardBatch):
                req.pending = event
                return
            if not isinstance(event, CacheCrop):  # pragma: no cover - programs suspend with the two events only
                raise TypeError(f"request {req.id}: expected a ForwardBatch or CacheCrop suspension, found {event!r}")
            self.backbone.crop(req.row, event.length)
            event = program.resume(None)  # type: ignore[union-attr]

    def _on_emit(self, req: _Request, event: Emission) -> bool:
        """Record emitted tokens; returns True when the request is finished."""
        p = req.params
        toks = event.tokens.tolist()
        lps = event.logprobs.tolist() if (p.logprobs and event.logprobs is not None) else [float("nan")] * len(toks)
        req.emit_sizes.append(len(toks))
        req.committed += len(toks)
        if event.info is not None:
            req.cycle_info.append(event.info)
        if p.end_think_token_id is not None and p.end_think_token_id in toks and req.force_pos is not None:
            req.force_pos.fill_(-1)  # thinking ended: nothing left to force (the program reads this input live)
        stops = set(p.stop_token_ids)
        if not p.ignore_eos and self.config.eos_token_id is not None:
            stops.add(self.config.eos_token_id)
        for tok, lp in zip(toks, lps):
            req.tokens.append(tok)
            req.new.append(tok)
            req.logprobs.append(lp)
            n = len(req.tokens)
            if n >= p.min_new_tokens and tok in stops:
                req.finish_reason = "stop"
                return True
            if n >= p.min_new_tokens and p.stop_strings and self._stop_string_hit(req):
                req.finish_reason = "stop_string"
                return True
            if n >= p.max_new_tokens:
                req.finish_reason = "length"
                return True
        return False

    def _stop_string_hit(self, req: _Request) -> bool:
        if self.tokenizer is None:
            raise ValueError("stop_strings need a tokenizer: load the model with one or pass tokenizer= to Session")
        tail = self.tokenizer.decode(req.tokens[-16:], skip_special=True)
        return any(s in tail for s in req.params.stop_strings)

    def _finish(self, req: _Request, reason: str) -> None:
        if req.program is not None and not req.program.finished:
            req.program.close()
        req.pending = None
        req.finish_reason = reason
        req.seconds = time.perf_counter() - req.started
        if req.load is not None and req.id in self._active:
            self._adaptive -= 1
        self._active.pop(req.id, None)
        if req.row >= 0:
            self.backbone.free_rows([req.row])
        self._done[req.id] = req

    def _calls(self, reqs: list[_Request]) -> list[list[_Request]]:
        """The round's pending forwards as backbone calls: one, or two (the narrower forwards, then the wider)
        where the cost model prices two calls below one. A call is padded to its widest row, so a prompt
        joining rows that decode a token each would make every row as wide as the prompt: on SmolLM2 on a
        CPU, 15 decoding rows padded to a 270-token prefill cost seconds, a second call about 50 ms.
        Without measurements (the cost model's prior: every call costs the same) it is always one call."""
        if len(reqs) < 2 or not self.split_calls or not self.cost_model.calibrated:
            return [reqs] if reqs else []
        widths = [r.pending.tokens.shape[1] for r in reqs]  # type: ignore[union-attr]
        lasts = [int(r.pending.positions.max()) for r in reqs]  # type: ignore[union-attr]
        adapted = [bool(r.pending.adapter.any()) for r in reqs]  # type: ignore[union-attr]

        def seconds(idx: list[int]) -> float:
            shape = call_shape(len(idx), max(widths[i] for i in idx), [lasts[i] for i in idx],
                               any(adapted[i] for i in idx))
            return self.cost_model.predict(shape.rows, shape.width, shape.spans, shape.adapter)

        order = sorted(range(len(reqs)), key=widths.__getitem__)
        best, cut = seconds(order), 0
        for k in range(1, len(order)):
            if widths[order[k - 1]] < widths[order[k]]:
                split = seconds(order[:k]) + seconds(order[k:])
                if split < best:
                    best, cut = split, k
        if not cut:
            return [reqs]
        return [[reqs[i] for i in sorted(order[:cut])], [reqs[i] for i in sorted(order[cut:])]]

    def _forward(self, reqs: list[_Request]) -> torch.Tensor:
        """Pack the pending forwards of ``reqs`` into one backbone call. The call is timed for the cost model
        on a host device, and on CUDA while an adaptive request is active (the timing synchronises); an
        adaptive request then learns its load."""
        batch = ForwardBatch.pack([r.pending for r in reqs])  # type: ignore[misc]
        self.backbone_calls += 1
        if not self._adaptive and self.device.type == "cuda":
            return self.backbone.forward(batch)
        t0 = time.perf_counter()
        logits = self.backbone.forward(batch)
        if logits.device.type == "cuda":
            torch.cuda.synchronize(logits.device)
        seconds = time.perf_counter() - t0
        widths = [r.pending.tokens.shape[1] for r in reqs]  # type: ignore[union-attr]
        lasts = [int(x) for x in batch.positions.max(dim=1).values.tolist()]
        self.cost_model.observe(call_shape(len(reqs), max(widths), lasts, bool(batch.adapter.any())), seconds)
        if self._adaptive:
            self._share_load(reqs, widths, lasts)
        return logits

    def _share_load(self, reqs: list[_Request], widths: list[int], lasts: list[int]) -> None:
        """Tell each adaptive request what the others put in this round: their rows, their widest forward,
        their key spans, and the tokens they committed in the round before."""
        spans = sum(p + 1 for p in lasts)
        committed = sum(r.committed_before for r in self._active.values())
        order = sorted(range(len(widths)), key=lambda i: -widths[i])
        for i, req in enumerate(reqs):
            if req.load is None:
                continue
            widest = next((widths[j] for j in order if j != i), 0)
            req.load.copy_(torch.tensor([len(reqs) - 1, widest, spans - lasts[i] - 1,
                                         committed - req.committed_before], dtype=torch.float64))


def _cut_at_stop_string(text: str, stops: Sequence[str]) -> str:
    hits = [text.find(s) for s in stops if s in text]
    return text[:min(hits)] if hits else text


def _backbone_device(backbone: Backbone) -> torch.device:
    dev = getattr(backbone, "device", None)
    return torch.device(dev) if dev is not None else torch.device("cpu")
