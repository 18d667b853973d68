"""Host cost of mode auto's cycle: one Session, N requests at once, auto against ar, milliseconds per round.

Both run the same requests (chat prompts from ``bench/prompts/``) in a Session that splits rounds as a server's
does, with the backbone's calibrated cost model (``graphrt.cost_model.for_model``); they are interleaved twice
and the second run of each is reported. Where auto takes a plain step in every cycle, the two make the same
rounds, and the difference per round is auto's host work (the lookup, the choice, the statistics update).
``--profile`` prints where auto's rounds go (cProfile, cumulative).

Run: ``python bench/auto_round_cost.py [--model MODEL] [--requests 16] [--max-tokens 64] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time
from pathlib import Path

import torch

import graphrt
from graphrt.cost_model import for_model
from graphrt.params import GenerationParams
from graphrt.session import Session

PROMPTS = Path(__file__).resolve().parent / "prompts" / "chat.jsonl"


def run(model: graphrt.Model, mode: str, requests: int, max_tokens: int, cost_model,
        profile: cProfile.Profile | None = None) -> tuple[int, float, float]:
    """``(rounds, ms per round, tokens/s)`` of ``requests`` chat requests admitted together, after their prefill."""
    prompts = [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()]
    policy = graphrt.compile(mode, model)
    session = Session(model.backbone, model.tokenizer, split_calls=True, cost_model=cost_model)
    for i in range(requests):
        session.add(policy, model.tokenizer.encode_chat(prompts[i % len(prompts)]["messages"]),
                    GenerationParams(max_new_tokens=max_tokens))
    session.step()  # the prefill round
    rounds, t0 = 0, time.perf_counter()
    if profile is not None:
        profile.enable()
    while session.has_work:
        session.step()
        rounds += 1
    if profile is not None:
        profile.disable()
    seconds = time.perf_counter() - t0
    tokens = sum(len(r.tokens) for r in session.run().values())
    return rounds, seconds / rounds * 1e3, tokens / seconds


def main() -> None:
    """Print ar's and auto's rounds and milliseconds per round."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint or named model (default: the shipped model)")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = graphrt.load(args.model, max_batch=args.requests)
    cost_model = for_model(model, budget_s=2.0)
    results = {}
    for mode in ("ar", "auto", "ar", "auto"):  # the second run of each is reported
        results[mode] = run(model, mode, args.requests, args.max_tokens, cost_model)
    for mode, (rounds, ms, rate) in results.items():
        print(f"{mode}: {rounds} rounds, {ms:.2f} ms per round, {rate:.0f} tok/s")
    if args.profile:
        profile = cProfile.Profile()
        run(model, "auto", args.requests, args.max_tokens, cost_model, profile)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
