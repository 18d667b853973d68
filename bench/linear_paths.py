"""Small-row linear layers on CPU, path by path: where SmolLM2's forward spends its weight reads.

For each matrix shape of SmolLM2-135M (576->576, 576->192, 576->1536, 1536->576, the fused
576->960 q/k/v and 576->3072 gate/up, the 576->49152 head) and rows M in 1..32, times:

* ``linear``  -- ``F.linear`` on the ``[out, in]`` weight (what eager runs);
* ``mm_t``    -- ``torch.mm`` on the transposed contiguous ``[in, out]`` weight;
* ``mkl``     -- ``torch.ops.mkl._mkl_linear`` on a weight packed by ``_mkl_reorder_linear_weight``
  (inductor's freezing path for float32 on CPU);
* ``mkldnn``  -- ``torch.ops.mkldnn._linear_pointwise`` on ``_reorder_linear_weight``'s weight.

The weights of one shape are replicated to >= 256 MB and one timed pass runs the product over every
copy, so each product streams its weight from memory as in a real forward (one 576x576 matrix is
1.3 MB and would otherwise sit in the 32 MB L3). Paths are interleaved per repetition; the figure is
the median per-product time. The streaming-read floor (a sum over a 512 MB float32 tensor) is timed
in the same run.

Run: ``python bench/linear_paths.py [--repeats 15] [--out bench/results/linear_paths.md]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from typing import Callable

import torch
import torch.nn.functional as F

SHAPES = {  # name -> (in, out)
    "q/o 576->576": (576, 576),
    "k/v 576->192": (576, 192),
    "gate/up 576->1536": (576, 1536),
    "down 1536->576": (1536, 576),
    "qkv fused 576->960": (576, 960),
    "gate+up fused 576->3072": (576, 3072),
    "head 576->49152": (576, 49152),
}
ROWS = (1, 2, 4, 8, 16, 32)
PATHS = ("linear", "mm_t", "mkl", "mkldnn")


def streaming_floor(mb: int = 512, repeats: int = 15) -> float:
    """Median GB/s of ``x.sum()`` over an ``mb``-megabyte float32 tensor."""
    x = torch.ones(mb * 2**20 // 4)
    x.sum()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t0)
    return x.numel() * 4 / statistics.median(times) / 1e9


def make_calls(weights: list[torch.Tensor], M: int) -> dict[str, Callable[[torch.Tensor], None]]:
    """Per path, a function running one product per weight copy for an ``[M, in]`` input."""
    mm_w = [w.t().contiguous() for w in weights]  # [in, out]
    mkl_w = [torch.ops.mkl._mkl_reorder_linear_weight(w, M) for w in weights] if torch._C.has_mkl else None
    dnn_w = [torch.ops.mkldnn._reorder_linear_weight(w, M) for w in weights]

    def linear(x: torch.Tensor) -> None:
        for w in weights:
            F.linear(x, w)

    def mm_t(x: torch.Tensor) -> None:
        for w in mm_w:
            torch.mm(x, w)

    def mkl(x: torch.Tensor) -> None:
        for p, w in zip(mkl_w, weights):
            torch.ops.mkl._mkl_linear(x, p, w, None, M)

    def mkldnn(x: torch.Tensor) -> None:
        for p in dnn_w:
            torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")

    calls = {"linear": linear, "mm_t": mm_t, "mkldnn": mkldnn}
    if mkl_w is not None:
        calls["mkl"] = mkl
    return calls


def time_shape(fan_in: int, fan_out: int, rows: tuple[int, ...], repeats: int,
               total_mb: int = 256) -> dict[int, dict[str, float]]:
    """``{M: {path: median us per product}}`` for one weight shape."""
    copies = max(1, total_mb * 2**20 // (fan_in * fan_out * 4))
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(fan_out, fan_in, generator=g) * 0.02 for _ in range(copies)]  # [out, in] each
    out: dict[int, dict[str, float]] = {}
    for M in rows:
        x = torch.randn(M, fan_in, generator=g)  # [M, in]
        calls = make_calls(weights, M)
        ref = F.linear(x, weights[0])
        got = {"mm_t": torch.mm(x, weights[0].t().contiguous()),
               "mkldnn": torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(weights[0], M),
                                                            None, "none", [], "")}
        if "mkl" in calls:
            got["mkl"] = torch.ops.mkl._mkl_linear(x, torch.ops.mkl._mkl_reorder_linear_weight(weights[0], M),
                                                   weights[0], None, M)
        for name, y in got.items():  # every path computes the same product (float32 rounding)
            torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5, msg=f"{name} at M={M}")
        times: dict[str, list[float]] = {p: [] for p in calls}
        for rep in range(repeats + 2):
            for p, fn in calls.items():
                t0 = time.perf_counter()
                fn(x)
                if rep >= 2:
                    times[p].append((time.perf_counter() - t0) / copies * 1e6)
        out[M] = {p: statistics.median(v) for p, v in times.items()}
        del calls
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lines = [f"load before: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}",
             f"torch {torch.__version__}, threads {args.threads}, mkl {torch._C.has_mkl}, "
             f"cpu capability {torch.backends.cpu.get_cpu_capability()}"]
    gbs = streaming_floor()
    lines.append(f"streaming read (sum over 512 MB float32): {gbs:.1f} GB/s")
    lines.append("")
    lines.append("us per product (median); GB/s = weight bytes / time")
    lines.append("")
    lines.append("| shape | M | " + " | ".join(PATHS) + " | best GB/s |")
    lines.append("|---|---:|" + "---:|" * len(PATHS) + "---:|")
    print("\n".join(lines), flush=True)
    for name in args.shapes:
        fi, fo = SHAPES[name]
        res = time_shape(fi, fo, ROWS, args.repeats)
        for M, r in res.items():
            best = min(r.values())
            row = f"| {name} | {M} | " + " | ".join(f"{r[p]:.0f}" if p in r else "-" for p in PATHS) + \
                  f" | {fi * fo * 4 / best / 1e3:.1f} |"
            lines.append(row)
            print(row, flush=True)
    lines.append("")
    lines.append(f"load after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(lines[-1])
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
