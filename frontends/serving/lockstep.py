"""Serving a tensor-parallel model: the engines of all ranks step their sessions in lockstep.

Only rank 0 serves HTTP. Every rank runs the same :class:`~graphrt.frontends.serving.engine.Engine`
loop over its own :class:`graphrt.Session` on its shard of the model. Each turn of
the loop rank 0 decides what happens (a :class:`Decision`: the requests admitted
with everything :meth:`graphrt.Session.add` needs, the requests cancelled, or
stop) and :meth:`Lockstep.share` hands that decision to every rank; every rank
applies it and steps, so the sessions stay identical and the collectives inside
the forward pair up. What every rank does after a step (finished requests
released, a failing step's requests cancelled) follows from the session's state,
which is the same on every rank.

The exchange is one ``all_gather_object`` over a CPU gloo group of its own (also
when the model's group is NCCL): rank 0 contributes the decision, and every rank
a digest of what its previous step did (tokens emitted per request, or that it
failed). Every rank compares the digests, so a rank that fell out of step is
noticed by all of them at the same exchange: each raises :class:`LockstepError`
(rank 0 then fails its requests and stops the server; the other ranks exit with
an error). While no request is active rank 0 still sends an empty decision every
:data:`IDLE_TICK_S`, so the waiting ranks never reach the group's timeout
(:data:`TIMEOUT_S`), which bounds how long a rank waits for one that hangs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from graphrt.params import GenerationParams

IDLE_TICK_S = 5.0  # rank 0 sends an empty decision at least this often while idle
TIMEOUT_S = 300.0  # an exchange that waits longer for a rank raises (the group's timeout)

PolicyKey = tuple[str, "int | None", "float | None"]  # (mode, block_length, threshold)


@dataclass(frozen=True)
class Admit:
    """A request rank 0 admits: the policy's key and what :meth:`graphrt.Session.add` gets."""

    key: PolicyKey
    prompt: list[int]
    params: GenerationParams


@dataclass(frozen=True)
class Decision:
    """What every rank does this turn: cancel, then admit, then step (unless ``stop``)."""

    admit: list[Admit] = field(default_factory=list)
    cancel: list[int] = field(default_factory=list)  # session request ids
    stop: bool = False


class LockstepError(RuntimeError):
    """The ranks are no longer in lockstep (a step differed, or a rank is gone)."""


def step_digest(emitted: dict[int, list[int]] | None) -> str:
    """A digest of what one step did: tokens emitted per request, or ``None`` when the step failed."""
    text = "failed" if emitted is None else repr(sorted(emitted.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Lockstep:
    """One rank's end of the per-step exchange (build it on every rank, in the same order: a collective).

    Parameters
    ----------
    rank, world:
        This rank and the number of ranks (the tensor-parallel degree).
    """

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self.group = dist.new_group(backend="gloo", timeout=timedelta(seconds=TIMEOUT_S))
        self.turns = 0

    @property
    def leader(self) -> bool:
        """Whether this rank decides (rank 0, the one serving HTTP)."""
        return self.rank == 0

    def share(self, decision: Decision | None, digest: str) -> Decision:
        """Exchange this turn's decision (rank 0's) and every rank's digest of its previous step.

        Parameters
        ----------
        decision:
            Rank 0: this turn's decision; other ranks: ``None``.
        digest:
            :func:`step_digest` of this rank's previous step ("" before the first).

        Returns
        -------
        Decision
            Rank 0's decision, on every rank.

        Raises
        ------
        LockstepError
            The digests differ across ranks, or the exchange failed (a rank is gone or timed out).
        """
        if (decision is None) == self.leader:
            raise ValueError(f"Lockstep.share: expected a decision from rank 0 only, found "
                             f"{'none' if decision is None else 'one'} on rank {self.rank}")
        entries: list[Any] = [None] * self.world
        self.turns += 1
        try:
            dist.all_gather_object(entries, (decision, digest), group=self.group)
        except Exception as exc:  # noqa: BLE001 - gloo raises RuntimeError subclasses of several kinds
            raise LockstepError(f"rank {self.rank}: the exchange of turn {self.turns} with the other "
                                f"{self.world - 1} ranks failed ({type(exc).__name__}: {exc})") from exc
        digests = [d for _, d in entries]
        if len(set(digests)) > 1:
            raise LockstepError(f"rank {self.rank}: expected every rank's step before turn {self.turns} to emit the "
                                f"same tokens, found digests {digests} (by rank)")
        return entries[0][0]


def lockstep_for(backbone: Any) -> Lockstep | None:
    """The :class:`Lockstep` of a tensor-parallel backbone (``None`` for any other backbone)."""
    mesh = getattr(backbone, "mesh", None)
    if mesh is None or getattr(backbone, "tp", 1) == 1:
        return None
    return Lockstep(backbone.rank, backbone.tp)


__all__ = ["Admit", "Decision", "Lockstep", "LockstepError", "step_digest", "lockstep_for", "IDLE_TICK_S",
           "TIMEOUT_S"]
