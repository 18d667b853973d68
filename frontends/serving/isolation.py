"""A :class:`graphrt.Session` in which a request that fails at run time fails alone.

A plain session's :meth:`~graphrt.Session.step` raises when anything in it
raises, and the server then has to fail every request of the step. Here:

- a request whose admission or program raises is finished at once (its cache
  row freed) with ``finish_reason == "error"``, and the others go on;
- a packed backbone call that raises is retried one request at a time, so the
  requests whose own forward succeeds go on with the logits they would have got
  in the packed call (results do not depend on batch mates), and only those
  whose forward raises alone fail (a call of one request, one of a round split
  in two, fails that request at once). When every request of the round fails
  alone, the step raises as a plain session's does.

The failures of a step are collected in :attr:`IsolatingSession.failed`
(request id -> the exception); :meth:`IsolatingSession.take_failed` hands them
out, and the caller releases those requests as it does finished ones.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from graphrt.session import Session

log = logging.getLogger("graphrt.serve")


class IsolatingSession(Session):
    """A session whose requests fail one by one (see the module's docstring); same constructor."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failed: dict[int, Exception] = {}
        self._round_size = 0  # forwards in the current round, over its calls

    def take_failed(self) -> dict[int, Exception]:
        """The requests that failed since the last call (finished, rows freed), with why; forgets them."""
        failed, self.failed = self.failed, {}
        return failed

    def _admit(self) -> None:
        """Admit waiting requests one at a time, so one whose inputs cannot be built fails alone."""
        while self._waiting and self.backbone.free_row_count() > 0:
            rest, self._waiting = self._waiting[1:], self._waiting[:1]
            req = self._waiting[0]
            try:
                super()._admit()
            except Exception as exc:  # noqa: BLE001 - this request's failure, not the session's
                self._waiting = [r for r in self._waiting if r is not req]
                self._fail(req, exc)
            finally:
                self._waiting = self._waiting + rest

    def _drive(self, req: Any, resume: Any) -> None:
        if req.id in self.failed:  # its forward failed alone: its program is not resumed (with zeros)
            self._fail(req, self.failed[req.id])
            return
        try:
            super()._drive(req, resume)
        except Exception as exc:  # noqa: BLE001 - a request's program failed: that request only
            self._fail(req, exc)

    def _calls(self, reqs: list[Any]) -> list[list[Any]]:
        self._round_size = len(reqs)
        return super()._calls(reqs)

    def _forward(self, reqs: list[Any]) -> torch.Tensor:
        try:
            return super()._forward(reqs)
        except Exception as exc:
            if len(reqs) == 1 == self._round_size:  # the round's only forward: the step raises
                raise
            if len(reqs) == 1:  # one call of a split round: this request fails alone, the other call goes on
                self.failed[reqs[0].id] = exc
                return self._zeros(reqs)
            log.warning("a packed backbone call of %d requests raised (%s: %s); retrying them one by one",
                        len(reqs), type(exc).__name__, exc)
            return self._forward_one_by_one(reqs, exc)

    def _zeros(self, reqs: list[Any], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Zero logits ``[B, L, V]`` in the layout of a packed call of ``reqs`` (``L`` 1 when every request wants
        its last token's only), for a call made otherwise or one whose requests all failed."""
        width = 1 if all(r.pending.logits == "last" for r in reqs) else max(r.pending.tokens.shape[1] for r in reqs)
        return torch.zeros((len(reqs), width, self.config.vocab_size), dtype=dtype, device=self.device)

    def _forward_one_by_one(self, reqs: list[Any], packed_error: Exception) -> torch.Tensor:
        """The packed call's logits, made by one call per request; a request whose call raises is failed
        (its logits are zeros, which its program never sees: :meth:`_drive` finishes it instead)."""
        outs: list[torch.Tensor | None] = []
        for req in reqs:
            try:
                outs.append(super()._forward([req]))
            except Exception as exc:  # noqa: BLE001 - this request's forward fails alone
                self.failed[req.id] = exc
                outs.append(None)
        good = [o for o in outs if o is not None]
        if not good and len(reqs) == self._round_size:  # every request of the round fails alone
            for req in reqs:
                self.failed.pop(req.id, None)
            raise packed_error
        if not good:
            return self._zeros(reqs)
        logits = self._zeros(reqs, good[0].dtype)  # [B, L, V]; L is 1 when every request wants its last only
        for i, (req, out) in enumerate(zip(reqs, outs)):
            if out is None:
                continue
            n = req.pending.tokens.shape[1]
            if req.pending.logits == "last":
                logits[i, min(n, logits.shape[1]) - 1] = out[0, -1]
            else:
                logits[i, :n] = out[0, :n]
        return logits

    def step(self) -> dict[int, list[int]]:
        """:meth:`graphrt.Session.step`, then the requests that failed in it are finished and say nothing."""
        out = super().step()
        for rid in list(self.failed):
            req = self._active.get(rid)
            if req is not None:  # not driven this step: finish it now
                self._fail(req, self.failed[rid])
            out.pop(rid, None)
        return out

    def _fail(self, req: Any, exc: Exception) -> None:
        """Finish ``req`` with ``finish_reason == "error"`` (its row freed) and record why."""
        log.warning("request %d failed alone: %s: %s", req.id, type(exc).__name__, exc)
        self.failed[req.id] = exc
        if req.program is not None and not req.program.finished:
            try:
                req.program.close()
            except Exception:  # noqa: BLE001 - the request is failed either way
                log.exception("closing the program of failed request %d", req.id)
        req.program = None
        self._finish(req, "error")  # frees its row
        req.new = []
