"""Compile time of the default pipeline for graphs of about 10, 100, 1,000 and 10,000 nodes.

The graphs are decode policies scaled up: a prefill, then a loop whose body
chains ``units`` decode steps (a read-only forward, the library's sample /
confidence / denoise-select / acceptance / log-prob chains, arithmetic), with
a nested denoise loop every few units -- so every pass has work at every size.
Each size is compiled ``--repeat`` times (best time kept), with and without
``verify()`` after every pass. Results go to ``bench/results/compile_time.md``.

Run: ``python bench/compile_time.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from graphrt import noise
from graphrt.builder import GraphBuilder, Var
from graphrt.ir import Graph
from graphrt.library import (accept_length, ban_mask, confidence, decode_inputs, denoise_select, sample_tokens,
                             token_logprobs)
from graphrt.passes import default_pipeline

MASK = 95
BLOCK = 4
SIZES = (10, 100, 1_000, 10_000)
RESULTS = Path(__file__).parent / "results" / "compile_time.md"


def _unit(b: GraphBuilder, io, cache: Var, block: Var, start: Var, kind: int) -> Var:
    """One decode step appended to the body: returns the next block."""
    positions = b.arange(start, length=BLOCK)
    logits = ban_mask(b, b.forward(cache, block, positions, attention="bidirectional", write="none"), MASK)
    if kind % 4 == 3:  # a nested denoise loop
        def step(blk: Var) -> tuple[Var, ...]:
            lg = ban_mask(b, b.forward(cache, blk, positions, attention="bidirectional", write="none"), MASK)
            cand = sample_tokens(b, lg, positions, io, purpose=noise.DENOISE)
            nxt = denoise_select(b, blk, cand, confidence(b, lg, cand), MASK, 0.9)
            return (nxt == MASK).any(), nxt
        (block,) = b.loop((block == MASK).any(), [block], step, name="denoise")
        return block
    cand = sample_tokens(b, logits, positions, io, purpose=noise.DENOISE)
    conf = confidence(b, logits, cand)
    nxt = denoise_select(b, block, cand, conf, MASK, 0.5 if kind % 2 else None, None if kind % 2 else b.const(1))
    k = accept_length(b, nxt, sample_tokens(b, logits, positions + 1, io))
    lp = token_logprobs(b, logits, nxt)
    return b.where(lp.sum() > -1e9, b.where(k > 0, nxt, block), block)


def synthetic_policy(target: int) -> Graph:
    """A verified decode-policy graph with about ``target`` nodes (regions included)."""
    b = GraphBuilder(f"synthetic_{target}")
    io = decode_inputs(b)
    if target < 40:  # too small for a decode step: straight-line arithmetic on the prompt
        x = b.size(io.prompt)
        while b.graph.num_nodes() + 3 < target:
            x = (x + 1) * 2
        return b.build([x])
    logits, cache = b.forward(io.cache, io.prompt, b.arange_like(io.prompt, 0))
    seed = sample_tokens(b, ban_mask(b, logits[-1], MASK), b.size(io.prompt), io)
    block0 = b.concat(seed.unsqueeze(), b.fill(length=BLOCK - 1, value=MASK))
    per_unit = 50
    units = max(1, (target - b.graph.num_nodes()) // per_unit)

    def body(cache: Var, block: Var, start: Var) -> tuple[Var, ...]:
        for kind in range(units):
            block = _unit(b, io, cache, block, start, kind)
        done = b.emit(block, BLOCK)
        return ~done, cache, block, start + BLOCK

    b.loop(True, [cache, block0, b.size(io.prompt)], body, name="cycle")
    return b.build()


def measure(graph: Graph, repeat: int, verify_each: bool) -> tuple[float, list[dict]]:
    """Best-of-``repeat`` wall time (s) of the default pipeline, and that run's report."""
    best, report = float("inf"), []
    for _ in range(repeat):
        pipeline = default_pipeline(1, verify_each=verify_each)
        t0 = time.perf_counter()
        result = pipeline.run(graph)
        elapsed = time.perf_counter() - t0
        if elapsed < best:
            best, report = elapsed, result.report
    return best, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    for target in SIZES:
        graph = synthetic_policy(target)
        n = graph.num_nodes()
        with_verify, report = measure(graph, args.repeat, True)
        without, _ = measure(graph, args.repeat, False)
        slowest = max(report, key=lambda r: r["seconds"])
        rows.append((target, n, with_verify, without, slowest["pass"], slowest["seconds"]))
        print(f"{n:>6} nodes: {with_verify * 1e3:9.1f} ms with verify, {without * 1e3:9.1f} ms without "
              f"({without / n * 1e6:6.1f} us/node); slowest pass {slowest['pass']}", flush=True)
    lines = [
        "# Compile time of the default pipeline (O1)",
        "",
        "`python bench/compile_time.py` -- synthetic decode policies (prefill + a loop of chained decode steps,",
        "a nested denoise loop every fourth step), best of "
        f"{args.repeat} runs, on this machine's CPU (2 cores shared with other work).",
        "",
        "| target | nodes | pipeline + verify after each pass | pipeline only | per node (pipeline only) | "
        "slowest pass |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for target, n, wv, wo, sp, st in rows:
        lines.append(f"| {target:,} | {n:,} | {wv * 1e3:.1f} ms | {wo * 1e3:.1f} ms | {wo / n * 1e6:.1f} us | "
                     f"{sp} ({st * 1e3:.1f} ms) |")
    small, large = rows[1], rows[-1]
    growth = (large[3] / small[3]) / (large[1] / small[1])
    lines += ["", f"From {small[1]:,} to {large[1]:,} nodes the pipeline's time grows {large[3] / small[3]:.0f}x "
              f"for {large[1] / small[1]:.0f}x the nodes (time per node x{growth:.2f}): linear.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
