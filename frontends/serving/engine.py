"""The engine loop: one thread drives one :class:`graphrt.Session` for the HTTP side.

The HTTP side (an asyncio event loop) hands :class:`Job` s to
:meth:`Engine.submit` and reads each job's events from an ``asyncio.Queue``;
the engine thread owns the session and is the only one that touches it.
Between two steps it applies cancellations and admits waiting jobs while cache
rows are free; each step's emitted tokens are posted to their jobs at once; a
finished job gets its :class:`~graphrt.GenerationResult` and frees its row.

A job is added to the session only when a row is free for it, so every
request the session holds is active in its next step. The session is an
:class:`~graphrt.frontends.serving.isolation.IsolatingSession`: a request whose
own work raises (its admission, its program, its forward alone) fails alone with
a 500 and its row freed, and its batch mates go on unchanged; when a step raises
all the same, the requests of that step are cancelled and answered with a 500,
and the same session goes on with the next ones. :attr:`Engine.stalled` says
when requests are held but the engine has made no progress for a while
(``/health`` then reports it). A finished request's result
is taken with :meth:`graphrt.Session.release`, so the session forgets it and
memory stays flat however long the server runs.

On a tensor-parallel model every rank runs this loop over its own session; each
turn rank 0 decides (cancellations, admissions, or stop) and shares the decision
through :class:`~graphrt.frontends.serving.lockstep.Lockstep`, so every rank
applies the same one (:mod:`.lockstep` says what happens when a rank falls out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable

from graphrt.api import Model, compile as compile_mode
from graphrt.cost_model import CostModel
from graphrt.compiled import CompiledPolicy
from graphrt.frontends.serving.lockstep import (IDLE_TICK_S, Admit, Decision, LockstepError, PolicyKey,
                                                lockstep_for, step_digest)
from graphrt.frontends.serving.isolation import IsolatingSession
from graphrt.frontends.serving.metrics import Metrics
from graphrt.frontends.serving.protocol import RequestError
from graphrt.params import GenerationParams, GenerationResult

POLICY_CACHE_SIZE = 32  # compiled policies kept (least recently used dropped first)
STALL_S = 60.0  # requests held this long without any progress: the engine is stalled

log = logging.getLogger("graphrt.serve")


@dataclass(frozen=True)
class Tokens:
    """Event: tokens one step emitted for a job."""

    ids: list[int]


@dataclass(frozen=True)
class Finished:
    """Event: the job's result (the last event of a job that succeeded)."""

    result: GenerationResult


@dataclass(frozen=True)
class Failed:
    """Event: the job failed (the last event of a job that did not succeed)."""

    error: RequestError


@dataclass(eq=False)
class Job:
    """One request on its way through the engine.

    Parameters
    ----------
    policy, prompt, params:
        What :meth:`graphrt.Session.add` gets.
    loop:
        The event loop of the HTTP handler waiting on :attr:`events` (``None`` on a
        tensor-parallel rank other than 0, which serves no one: its events go nowhere).
    key:
        The policy's key in the engine's cache (what another rank compiles it from).
    deadline:
        ``time.monotonic()`` by which the HTTP side gives up on it (cancels it).
    """

    policy: CompiledPolicy
    prompt: list[int]
    params: GenerationParams
    loop: asyncio.AbstractEventLoop | None
    key: PolicyKey | None = None
    deadline: float = float("inf")
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    arrived: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    request_id: int | None = None

    def post(self, event: Tokens | Finished | Failed) -> None:
        """Hand ``event`` to the handler's event loop (thread-safe)."""
        if self.loop is None:
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the handler's loop is closed: nobody is listening any more
            pass


class Engine:
    """One session, its engine thread, and the bounded waiting queue in front of it.

    Parameters
    ----------
    model:
        The loaded model (its backbone's rows bound the active requests).
    max_active:
        Requests active at once (default: every cache row of the backbone).
    max_queue:
        Requests that may wait for a row; one more is refused with a 429.
    metrics:
        Where to count (a fresh :class:`Metrics` by default).
    policy_cache:
        Compiled policies kept (one per mode and knobs asked for; least recently used dropped).
    stall_s:
        Seconds without progress, with requests held, after which :attr:`stalled` says so.
    cost_model:
        The backbone's measured call times for mode ``auto`` (:func:`graphrt.cost_model.for_model`);
        default: an unmeasured one that learns from the calls it observes.

    On a tensor-parallel model (:mod:`.lockstep`) the engine of every rank is built
    at the same time (a collective); rank 0's serves HTTP (:meth:`start`), the others
    :meth:`follow` rank 0's decisions.
    """

    def __init__(self, model: Model, max_active: int | None = None, max_queue: int = 64,
                 metrics: Metrics | None = None, policy_cache: int = POLICY_CACHE_SIZE,
                 stall_s: float = STALL_S, cost_model: CostModel | None = None) -> None:
        rows = model.backbone.free_row_count()
        if max_active is not None and not 0 < max_active <= rows:
            raise ValueError(f"max_active: expected an int in [1, {rows}] (the backbone's free cache rows), "
                             f"found {max_active!r}")
        if not isinstance(max_queue, int) or max_queue < 0:
            raise ValueError(f"max_queue: expected an int >= 0, found {max_queue!r}")
        self.model = model
        self.max_active = max_active or rows
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        if not isinstance(policy_cache, int) or policy_cache < 1:
            raise ValueError(f"policy_cache: expected an int >= 1, found {policy_cache!r}")
        # a prompt gets its own call where padding the decoding rows to it costs more (not across tensor-parallel
        # ranks: each times its own calls, and all must make the same ones)
        self.session = IsolatingSession(model.backbone, model.tokenizer,
                                        split_calls=lockstep_for(model.backbone) is None)
        if cost_model is not None:  # mode auto's measured backbone (else it measures as requests run)
            self.session.cost_model = cost_model
        self._jobs: dict[int, Job] = {}  # request id -> job holding a row (engine thread only)
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._cancels: list[Job] = []
        self._policies: OrderedDict[PolicyKey, CompiledPolicy] = OrderedDict()  # least recently used first
        self.policy_cache = policy_cache
        self._policies_lock = threading.Lock()  # guards self._policies (held for a lookup, never for a compile)
        self._compile_lock = threading.Lock()  # one compile at a time
        self.stall_s = stall_s
        self._progress = time.monotonic()  # the last time a job moved (tokens, finished, failed) or none was held
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="graphrt-engine", daemon=True)
        self.lockstep = lockstep_for(model.backbone)
        self.failure: Exception | None = None  # why the engine loop stopped on its own (ranks out of step, a bug)
        self.on_failure: Callable[[], None] | None = None  # called (engine thread) when it does

    # ------------------------------------------------------------------ HTTP side
    def start(self) -> None:
        """Start the engine thread (on a tensor-parallel model: rank 0's only)."""
        if self.lockstep is not None and not self.lockstep.leader:
            raise ValueError(f"Engine.start: expected rank 0 (the rank serving HTTP), found rank "
                             f"{self.lockstep.rank}; the other ranks call Engine.follow")
        self._thread.start()

    def follow(self) -> None:
        """Tensor-parallel ranks other than 0: apply rank 0's decisions until it stops (blocks).

        Raises :class:`~graphrt.frontends.serving.lockstep.LockstepError` when the ranks fell out of
        step or rank 0 is gone (or whatever else stopped the loop).
        """
        if self.lockstep is None or self.lockstep.leader:
            raise ValueError("Engine.follow: expected a tensor-parallel rank other than 0, found "
                             + ("a single-device model" if self.lockstep is None else "rank 0"))
        self._run()
        if self.failure is not None:
            raise self.failure

    def stop(self) -> None:
        """Stop the engine thread (jobs still running are failed with a 503)."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        """Whether the engine thread runs."""
        return self._thread.is_alive()

    @property
    def stalled(self) -> str | None:
        """Why the engine cannot make progress, or ``None`` when it can.

        Stalled: its thread has stopped, or requests are held (active or waiting) and none has
        moved for :attr:`stall_s` seconds (a step that does not return, rows that never free).
        """
        if not self.alive:
            return "engine stopped"
        with self._cond:
            held = len(self._jobs) + len(self._waiting)
            idle_for = time.monotonic() - self._progress
        if held and idle_for > self.stall_s:
            return f"engine stalled: {held} requests held and none has progressed for {idle_for:.0f} s"
        return None

    def policy(self, mode: str, block_length: int | None, threshold: float | None) -> CompiledPolicy:
        """The compiled policy for a mode and its knobs (compiled once, then cached).

        The cache keeps the :attr:`policy_cache` most recently used policies; a cached policy is
        served while another one compiles.

        Raises ``RequestError`` (400) naming the knob a policy rejects.
        """
        key = (mode, block_length, threshold)
        policy = self._cached_policy(key)
        if policy is not None:
            return policy
        with self._compile_lock:
            policy = self._cached_policy(key)  # compiled while this call waited
            if policy is not None:
                return policy
            try:
                policy = compile_mode(mode, self.model, block_length=block_length, threshold=threshold)
            except ValueError as exc:
                param = next((p for p in ("block_length", "threshold") if p in str(exc)), "mode")
                raise RequestError(400, str(exc), param) from exc
        with self._policies_lock:
            self._policies[key] = policy
            while len(self._policies) > self.policy_cache:
                self._policies.popitem(last=False)
        return policy

    def _cached_policy(self, key: PolicyKey) -> CompiledPolicy | None:
        with self._policies_lock:
            policy = self._policies.get(key)
            if policy is not None:
                self._policies.move_to_end(key)
            return policy

    def check_fits(self, policy: CompiledPolicy, prompt_len: int, max_tokens: int) -> None:
        """Refuse (400) a request that can never be admitted: too long for the model or a cache row."""
        positions = self.model.config.max_positions
        if prompt_len >= positions:
            raise RequestError(400, f"prompt: expected at most {positions - 1} tokens (the model has {positions} "
                                    f"positions), found {prompt_len}", "prompt", code="context_length_exceeded")
        capacity = getattr(self.model.backbone, "row_capacity", None) or positions
        room = min(positions, capacity - policy.overshoot) - prompt_len
        if max_tokens > room:
            raise RequestError(400, f"max_tokens: the prompt's {prompt_len} tokens leave room for at most {room} "
                                    f"new tokens in {policy.name} mode, found max_tokens={max_tokens}",
                               "max_tokens", code="context_length_exceeded")

    def submit(self, job: Job) -> None:
        """Queue a job; ``RequestError`` 429 when the waiting queue is full."""
        with self._cond:
            if self._stop:
                raise RequestError(503, "the server is shutting down", kind="server_error")
            free_rows = max(0, self.max_active - len(self._jobs))
            if len(self._waiting) >= self.max_queue + free_rows:
                raise RequestError(429, f"the waiting queue is full ({self.max_queue} requests); retry later",
                                   kind="rate_limit_error", code="queue_full")
            if not self._jobs and not self._waiting:  # nothing was held: the wait for progress starts now
                self._progress = time.monotonic()
            self._waiting.append(job)
            self.metrics.queue_depth.set(len(self._waiting))
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Cancel a job (its client went away); its row is freed before the next step."""
        with self._cond:
            self._cancels.append(job)
            self._cond.notify()

    # ------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        """The engine loop: decide (rank 0), share the decision (tensor parallel), apply it and step."""
        digest = ""
        try:
            while True:
                decision, jobs = self._decide()
                if self.lockstep is not None:
                    decision = self.lockstep.share(decision if self.lockstep.leader else None, digest)
                if decision.stop:
                    break
                if self.lockstep is not None and not self.lockstep.leader:  # a follower makes its own jobs
                    jobs = [Job(self.policy(*a.key), a.prompt, a.params, loop=None, key=a.key)
                            for a in decision.admit]
                emitted = self._apply(decision, jobs)
                digest = step_digest(emitted) if self.lockstep is not None else ""
        except Exception as exc:  # noqa: BLE001 - out of step, or a bug: stop, and say why
            if isinstance(exc, LockstepError):
                log.error("tensor parallel: %s; stopping", exc)
            else:
                log.exception("the engine loop failed; stopping")
            self.failure = exc
            if self.on_failure is not None:
                self.on_failure()
        reason = "the server is shutting down" if self.failure is None else \
            f"the engine stopped: {type(self.failure).__name__}: {self.failure}"
        self._fail_active(RequestError(503, reason, kind="server_error"))
        with self._cond:
            self._stop = True
            waiting, self._waiting = list(self._waiting), deque()
        for job in waiting:
            self._fail(job, RequestError(503, reason, kind="server_error"))

    def _decide(self) -> tuple[Decision | None, list[Job]]:
        """Rank 0 (and a single-device engine): this turn's decision from the queues, and the jobs it admits.

        Waits until there is something to do (in lockstep, at most :data:`IDLE_TICK_S`: an empty
        decision then keeps the other ranks' exchange alive). Cancelled jobs still waiting are
        dropped here; those holding a row are in the decision. Other ranks: ``(None, [])``.
        """
        if self.lockstep is not None and not self.lockstep.leader:
            return None, []
        tick = IDLE_TICK_S if self.lockstep is not None else None
        with self._cond:
            if not (self._stop or self._waiting or self._cancels or self._jobs):
                self._cond.wait(tick)
            if self._stop:
                return Decision(stop=True), []
            cancels, self._cancels = self._cancels, []
            admit: list[Job] = []
            while self._waiting and len(self._jobs) + len(admit) < self.max_active:
                admit.append(self._waiting.popleft())
            for job in cancels:
                if job.request_id is None and (job in self._waiting or job in admit):
                    (self._waiting if job in self._waiting else admit).remove(job)
                    self.metrics.requests.labels(job.policy.name, "cancelled").inc()
            self.metrics.queue_depth.set(len(self._waiting))
        cancel = [job.request_id for job in cancels if job.request_id in self._jobs]
        decision = Decision([Admit(job.key, job.prompt, job.params) for job in admit], cancel)  # type: ignore
        return decision, admit

    def _apply(self, decision: Decision, jobs: list[Job]) -> dict[int, list[int]] | None:
        """Cancel, admit ``jobs`` (``decision.admit``'s), step; returns the step's tokens (``None``: it failed)."""
        for rid in decision.cancel:
            self._cancel(rid)
        for job in jobs:
            self._add(job)
        emitted = self._step() if self._jobs else {}
        self.metrics.active.set(len(self._jobs))
        return emitted

    def _add(self, job: Job) -> None:
        try:
            rid = self.session.add(job.policy, job.prompt, job.params)
        except Exception as exc:  # noqa: BLE001 - this request's, checked before it came here; fail it alone
            status = 400 if isinstance(exc, ValueError) else 500
            self._fail(job, RequestError(status, str(exc), "prompt" if status == 400 else None,
                                         kind="invalid_request_error" if status == 400 else "server_error"))
            return
        job.request_id = rid
        self._jobs[rid] = job

    def _cancel(self, rid: int) -> None:
        job = self._jobs.pop(rid, None)
        if job is None:
            return
        try:
            self.session.cancel(rid)
            result = self.session.release(rid)
        except Exception as exc:  # noqa: BLE001 - the job is gone either way
            log.exception("cancelling request %d", rid)
            self._fail(job, RequestError(500, f"cancelling the request failed: {type(exc).__name__}: {exc}",
                                         kind="server_error"))
            return
        self._finish(job, result)

    def _step(self) -> dict[int, list[int]] | None:
        session = self.session
        calls = session.backbone_calls
        start = time.perf_counter()
        try:
            emitted = session.step()
        except Exception as exc:  # noqa: BLE001 - a failing step must not take the server down
            log.exception("session step failed; failing its %d requests", len(self._jobs))
            self.metrics.failed_steps.inc()
            self._fail_active(RequestError(500, f"the engine step running this request failed: "
                                                f"{type(exc).__name__}: {exc}", kind="server_error"))
            return None
        finally:
            self.metrics.steps.inc()
            self.metrics.step_seconds.observe(time.perf_counter() - start)
            self.metrics.backbone_calls.inc(session.backbone_calls - calls)
        for rid, exc in self.session.take_failed().items():  # failed alone: their batch mates go on
            self.metrics.failed_steps.inc()
            emitted.pop(rid, None)
            job = self._jobs.pop(rid, None)
            with contextlib.suppress(KeyError):
                self.session.release(rid)
            if job is not None:
                self._fail(job, RequestError(500, f"running this request failed: {type(exc).__name__}: {exc}",
                                             kind="server_error"))
        now = time.perf_counter()
        for rid, ids in emitted.items():
            job = self._jobs.get(rid)
            if job is not None and ids:
                self._progress = time.monotonic()
                if job.first_token is None:
                    job.first_token = now
                    self.metrics.ttft.labels(job.policy.name).observe(now - job.arrived)
                job.post(Tokens(ids))
        for rid in [rid for rid in self._jobs if session.done(rid)]:
            self._finish(self._jobs.pop(rid), session.release(rid))
        return emitted

    def _finish(self, job: Job, result: GenerationResult) -> None:
        self._progress = time.monotonic()
        self.metrics.finished(result, time.perf_counter() - job.arrived)
        job.post(Finished(result))

    def _fail(self, job: Job, error: RequestError) -> None:
        self._progress = time.monotonic()
        self.metrics.requests.labels(job.policy.name, "error").inc()
        job.post(Failed(error))

    def _fail_active(self, error: RequestError) -> None:
        """Fail every job holding a row (after a failing step, or at shutdown) and cancel it in the session,
        which is then empty and usable for the next requests."""
        for rid, job in list(self._jobs.items()):
            try:
                self.session.cancel(rid)
                self.session.release(rid)
            except Exception:  # noqa: BLE001 - the job is failed either way
                log.exception("cancelling request %d after a failed step", rid)
            self._fail(job, error)
        self._jobs.clear()
