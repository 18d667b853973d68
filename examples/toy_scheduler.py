"""The step-level API driven from a toy scheduler: requests of mixed modes arrive, stream and get cancelled.

The scheduler owns the loop: each tick it admits arriving requests into the
:class:`graphrt.Session` (at most ``--max-active`` in flight; the rest queue),
calls ``session.step()`` once (one packed backbone call for every active
request, whatever its mode), streams each request's new tokens, reads
``session.poll(rid)`` for a request's output so far, and cancels a request
that goes past its own deadline (ticks).

Run: ``python examples/toy_scheduler.py [--requests 6] [--max-active 3]``
(the shipped model).
"""

from __future__ import annotations

import argparse
from collections import deque
from dataclasses import dataclass

import graphrt

PROMPTS = ["def parse_args(", "import os\n", "class A:\n", "for i in range(", "with open(", "return "]
MODES = ["ar", "diffusion", "self-spec", "self-spec-quadratic"]


@dataclass
class Job:
    """One user request as the scheduler sees it."""

    name: str
    prompt: str
    mode: str
    arrives: int            # tick
    deadline: int           # ticks after admission; then it is cancelled
    rid: int = -1
    admitted: int = -1
    text: str = ""


def main(argv: list[str] | None = None) -> dict[str, dict[str, object]]:
    """Run the toy scheduler; returns per job its mode, finish reason, tokens and whether streaming matched."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--max-active", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args(argv)

    model = graphrt.load(max_batch=args.max_active)
    tok = model.tokenizer
    policies = {m: graphrt.compile(m, model) for m in MODES}                # compile once, reuse per request
    session = graphrt.Session(model.backbone, tok)
    arriving = deque(Job(f"job{i}", PROMPTS[i % len(PROMPTS)], MODES[i % len(MODES)], arrives=i,
                         deadline=8 if i == 1 else 10_000) for i in range(args.requests))
    active: dict[int, Job] = {}
    streamed: dict[int, list[int]] = {}
    report: dict[str, dict[str, object]] = {}
    tick = 0
    while arriving or active:
        while arriving and arriving[0].arrives <= tick and len(active) < args.max_active:
            job = arriving.popleft()
            params = graphrt.GenerationParams(max_new_tokens=args.max_new_tokens, ignore_eos=True)
            job.rid = session.add(policies[job.mode], tok.encode(job.prompt), params)
            job.admitted = tick
            active[job.rid] = job
            streamed[job.rid] = []
        for rid, new in session.step().items():                                # one backbone call
            streamed[rid] += new
            active[rid].text += tok.decode(new)
        for rid, job in list(active.items()):
            if not session.done(rid) and tick - job.admitted >= job.deadline:
                session.cancel(rid)                                             # e.g. the client went away
            if session.done(rid):
                res = session.result(rid)
                report[job.name] = {"mode": job.mode, "finish_reason": res.finish_reason, "tokens": res.tokens,
                                    "streamed_ok": streamed[rid] == res.tokens == session.poll(rid),
                                    "forwards": res.forwards}
                print(f"tick {tick:3d} {job.name} [{job.mode}] {res.finish_reason}: {job.prompt!r} -> {job.text!r}")
                del active[rid]
        tick += 1
    print(f"{session.backbone_calls} backbone calls for {sum(len(r['tokens']) for r in report.values())} tokens")
    return report


if __name__ == "__main__":
    main()
