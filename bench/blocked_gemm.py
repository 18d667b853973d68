"""The blocked product against oneDNN's prepacked one and ``F.linear``, over SmolLM2's 121 projection shapes.

Times one pass over a stack of SmolLM2-shaped random weights (30 layers of q/k/v fused 576->960, o
576->576, gate/up fused 576->3072, down 1536->576, plus the 576->49152 head: 538 MB, streamed from memory)
at each row count, for:

* ``blocked``: :class:`graphrt.frontends.models.blocked_gemm.BlockedWeight`, graphrt's packed path;
* ``onednn``: ``torch.ops.mkldnn._linear_pointwise`` on ``_reorder_linear_weight``'s weight (the layout
  inductor's weight freezing uses; graphrt's packed path before the blocked product), products of 1..3 rows
  padded to 4 as that path did;
* ``f.linear``: ``F.linear`` on the plain ``[out, in]`` weights (MKL).

Contenders are interleaved within each repetition; figures are medians. The streaming-read floor (a sum over a
512 MB float32 tensor) is timed in the same run, and so is ``blocked in cache``: products of one 576->3072 weight
(7 MB, resident in the last-level cache) repeated to 538 MB, the arithmetic without the memory traffic.
It also checks, for every row count, that each row of the blocked product equals that row computed alone, bit
for bit.

Run: ``python bench/blocked_gemm.py [--repeats 9] [--out bench/results/blocked_gemm.md]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

from graphrt.frontends.models.blocked_gemm import BlockedWeight

SHAPES = ((960, 576), (576, 576), (3072, 576), (576, 1536))  # (out, in) per layer
HEAD = (49152, 576)
ROWS = (1, 2, 3, 4, 5, 8, 9, 16, 32, 64, 232)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, nargs="*", default=list(ROWS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(s, generator=g) for _ in range(30) for s in SHAPES] + [torch.randn(HEAD, generator=g)]
    blocked = [BlockedWeight(w, "bench") for w in weights]
    hot = blocked[2]  # one 576->3072 weight, reused: it stays in cache
    hot_calls = round(sum(w.numel() for w in weights) / weights[2].numel())
    onednn = [torch.ops.mkldnn._reorder_linear_weight(w) for w in weights]
    gb = sum(w.numel() for w in weights) * 4 / 1e9
    floor_x = torch.ones(512 * 2**20 // 4)
    reads: list[float] = []
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    lines = ["| rows | blocked ms | blocked in cache ms | onednn ms | f.linear ms | blocked GB/s | onednn / blocked | "
             "every row = that row alone |", "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for m in args.rows:
        xs = {k: torch.randn(m, k, generator=g) for k in (576, 1536)}
        padded = {k: F.pad(v, (0, 0, 0, max(0, 4 - m))) for k, v in xs.items()}
        runs = {
            "blocked": lambda: [b(xs[w.shape[1]]) for w, b in zip(weights, blocked)],
            "in cache": lambda: [hot(xs[576]) for _ in range(hot_calls)],
            "onednn": lambda: [torch.ops.mkldnn._linear_pointwise(padded[w.shape[1]], p, None, "none", [], "")
                               for w, p in zip(weights, onednn)],
            "f.linear": lambda: [F.linear(xs[w.shape[1]], w) for w in weights],
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for f in runs.values():
            f()  # warm (and compile)
        for _ in range(args.repeats if m <= 64 else max(2, args.repeats // 3)):
            t0 = time.perf_counter()
            floor_x.sum()
            reads.append(floor_x.numel() * 4 / (time.perf_counter() - t0) / 1e9)
            for name, f in runs.items():
                t0 = time.perf_counter()
                f()
                times[name].append((time.perf_counter() - t0) * 1e3)
        x, b = xs[576], blocked[2]
        wide = b(x)
        same = all(torch.equal(b(x[i:i + 1]), wide[i:i + 1]) for i in range(m))
        med = {name: statistics.median(t) for name, t in times.items()}
        lines.append(f"| {m} | {med['blocked']:.1f} | {med['in cache']:.1f} | {med['onednn']:.1f} | "
                     f"{med['f.linear']:.1f} | "
                     f"{gb / med['blocked'] * 1e3:.1f} | {med['onednn'] / med['blocked']:.2f} | {same} |")
        print(lines[-1], flush=True)
    load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    bw = statistics.median(reads)
    text = (f"# The blocked product against oneDNN and F.linear: SmolLM2's 121 products ({gb * 1e3:.0f} MB), "
            f"{args.threads} threads, medians of {args.repeats}\n\n"
            f"command: python bench/blocked_gemm.py --repeats {args.repeats}\n"
            f"torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}\n"
            f"load before: {load_before}\nload after:  {load_after}\n"
            f"streaming read {bw:.1f} GB/s -> floor {gb / bw * 1e3:.1f} ms per pass\n\n" + "\n".join(lines) + "\n")
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
