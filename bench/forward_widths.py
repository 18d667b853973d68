"""Forward cost by width on a real checkpoint, path by path, side by side in one run.

Loads the checkpoint once per linear-layer path (``eager``: ``F.linear`` on the stored weights; ``packed``:
the blocked weights of :mod:`graphrt.frontends.models.packed_linear`, without and with q/k/v and gate/up
fused; ``packed+fused-no-products``: the same with every product returning an uninitialised output, what a
forward costs outside its products; ``packed+fused-torch-glue``: the same with each layer's work between its
products run by the torch layer instead of :mod:`graphrt.frontends.models.fused_glue`; ``packed+fused-onednn``:
the same fused layout run by oneDNN's prepacked inner product, the layout inductor's weight freezing uses, the
path before the blocked product, padded to 4 rows as it was), writes a cached prefix into one row of each, then
times forwards of each width over that prefix (causal, nothing written, so the prefix stays the same). Paths and
widths are interleaved within each repetition; figures are medians (and the 10th percentile, the least disturbed
by other processes on the machine). The streaming-read floor (weight bytes / the GB/s of a sum over a 512 MB
float32 tensor) is timed in the same run, between repetitions.

Run: ``python bench/forward_widths.py --model smollm2 [--repeats 20] [--out FILE.md]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import warnings
from typing import Callable

import torch

import graphrt
from graphrt.backbone import ForwardBatch

WIDTHS = (1, 2, 4, 8, 16, 32)
PATHS = {"eager": {"linear": "eager"}, "packed": {"linear": "packed", "fuse": False},
         "packed+fused": {"linear": "packed"}, "packed+fused-onednn": {"linear": "packed", "onednn": True},
         "packed+fused-no-products": {"linear": "packed", "no_products": True},
         "packed+fused-torch-glue": {"linear": "packed", "torch_glue": True}}


class NoProduct:
    """A packed weight whose product returns an uninitialised output of the right shape: what a forward
    costs outside its products (its logits are meaningless)."""

    def __init__(self, blocked) -> None:
        self.out_features = blocked.out_features

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return torch.empty(*x.shape[:-1], self.out_features)

    def into(self, x, y) -> None:
        """The fused glue's call: the caller's buffer left as it is."""


class OneDNNWeight:
    """A :class:`~graphrt.frontends.models.blocked_gemm.BlockedWeight`'s matrix run by oneDNN's prepacked inner
    product (``torch.ops.mkldnn``), products of 1..3 rows padded to 4 (oneDNN's kernel for 1-2 rows streams
    the weights more slowly)."""

    def __init__(self, blocked) -> None:
        w = blocked.tensor.transpose(1, 2).reshape(-1, blocked.in_features)[:blocked.out_features]  # [out, in]
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous())
        self.out_features = blocked.out_features

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        x2 = torch.nn.functional.pad(x.reshape(rows, x.shape[-1]), (0, 0, 0, max(0, 4 - rows)))
        out = torch.ops.mkldnn._linear_pointwise(x2, self.packed, bias, "none", [], "")
        return out[:rows].view(*x.shape[:-1], self.out_features)

    def into(self, x, y) -> None:
        """The fused glue's call: the product written into the caller's buffer."""
        torch.from_numpy(y).copy_(self(torch.from_numpy(x)))


def load_path(model: str, options: dict, max_seq_len: int) -> graphrt.Model:
    """The checkpoint loaded with one linear-layer path."""
    from graphrt.frontends.models.packed_linear import prepack

    m = graphrt.load(model, dtype="float32", max_batch=1, max_seq_len=max_seq_len, linear="eager")
    if options["linear"] == "packed":
        prepack(m.backbone.model, fuse=options.get("fuse", True))
    if options.get("torch_glue"):
        for layer in m.backbone.model.encoder.layers:
            layer.glue = None
    swap = OneDNNWeight if options.get("onednn") else NoProduct if options.get("no_products") else None
    if swap is not None:
        for mod in m.backbone.model.modules():
            for owner in (mod, getattr(mod, "product", None)):
                if owner is not None and hasattr(owner, "packed") and not isinstance(owner.packed, swap):
                    owner.packed = swap(owner.packed)
    return m


def weight_bytes(m: graphrt.Model) -> int:
    """Bytes a forward reads from the weights: every matrix once (a tied head counted once more, as the
    head reads the embedding matrix in full), the embedding lookup's rows not counted."""
    cfg = m.backbone.model.config
    h, i, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    per_layer = h * d * (cfg.num_attention_heads * 2 + cfg.num_key_value_heads * 2) + 3 * h * i
    return 4 * (cfg.num_hidden_layers * per_layer + cfg.vocab_size * h)


def caller(m: graphrt.Model, ids: torch.Tensor, prefix: int) -> Callable[[int], torch.Tensor]:
    """A function running one forward of ``width`` tokens over ``m``'s ``prefix``-token cached row."""
    bb = m.backbone
    (row,) = bb.alloc_rows(1)

    def call(start: int, width: int, write: bool) -> torch.Tensor:
        return bb.forward(ForwardBatch(rows=[row], tokens=ids[:, start:start + width],
                                       positions=torch.arange(start, start + width)[None],
                                       attention=torch.ones(width, width, dtype=torch.bool).tril()[None],
                                       kind="causal", kv_write=torch.full((1, width), write),
                                       adapter=torch.zeros(1, width, dtype=torch.bool),
                                       valid=torch.ones(1, width, dtype=torch.bool)))

    call(0, prefix, True)
    return lambda width: call(prefix, width, False)


def read_gbs(x: torch.Tensor) -> float:
    """GB/s of one ``x.sum()``."""
    t0 = time.perf_counter()
    x.sum()
    return x.numel() * 4 / (time.perf_counter() - t0) / 1e9


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--paths", nargs="*", default=list(PATHS), choices=list(PATHS))
    ap.add_argument("--widths", nargs="*", type=int, default=list(WIDTHS))
    ap.add_argument("--prefix", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    load_before = uptime()
    models, load_s = {}, {}
    for p in args.paths:
        t0 = time.perf_counter()
        models[p] = load_path(args.model, PATHS[p], args.prefix + max(args.widths) + 8)
        load_s[p] = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    vocab = next(iter(models.values())).backbone.config.vocab_size
    ids = torch.randint(4, vocab, (1, args.prefix + max(args.widths)), generator=g)  # [1, prefix + width]
    calls = {p: caller(m, ids, args.prefix) for p, m in models.items()}
    base = args.paths[0]
    for w in args.widths:  # every path gives the base path's logits up to float32 rounding
        ref = calls[base](w)
        for p in args.paths[1:]:
            if PATHS[p].get("no_products"):
                continue
            got = calls[p](w)
            if not bool((got.argmax(-1) == ref.argmax(-1)).all()):
                print(f"warning: {p} width {w}: argmax differs from {base}", file=sys.stderr)
            print(f"{p} width {w}: max |logit diff| vs {base} {float((got - ref).abs().max()):.2e}")
    floor_x = torch.ones(512 * 2**20 // 4)
    times: dict[tuple[str, int], list[float]] = {(p, w): [] for p in calls for w in args.widths}
    gbs: list[float] = []
    for rep in range(args.repeats + 2):
        gbs.append(read_gbs(floor_x))
        for p, call in calls.items():
            for w in args.widths:
                t0 = time.perf_counter()
                call(w)
                if rep >= 2:
                    times[p, w].append((time.perf_counter() - t0) * 1e3)
    load_after = uptime()
    wb = weight_bytes(next(iter(models.values())))
    bw = statistics.median(gbs[2:])
    floor_ms = wb / bw / 1e6
    lines = [f"command: python bench/forward_widths.py --model {args.model} --repeats {args.repeats} "
             f"--prefix {args.prefix} --paths {' '.join(args.paths)} --widths {' '.join(map(str, args.widths))}",
             f"torch {torch.__version__}, {args.threads} threads, cpu capability "
             f"{torch.backends.cpu.get_cpu_capability()}",
             f"load before: {load_before}", f"load after:  {load_after}",
             f"load + prepare seconds: " + ", ".join(f"{p} {s:.1f}" for p, s in load_s.items()),
             f"weights read per forward: {wb / 1e6:.0f} MB; streaming read {bw:.1f} GB/s (median of "
             f"{len(gbs) - 2}, max {max(gbs):.1f}) -> floor {floor_ms:.1f} ms",
             "", "ms per forward over a %d-token prefix, median (p10)" % args.prefix, "",
             "| path | " + " | ".join(f"width {w}" for w in args.widths) + " | max(2..16)/1 | 1/floor |",
             "|---|" + "---:|" * (len(args.widths) + 2)]
    for p in calls:
        med = {w: statistics.median(times[p, w]) for w in args.widths}
        p10 = {w: sorted(times[p, w])[len(times[p, w]) // 10] for w in args.widths}
        flat = [med[w] / med[1] for w in args.widths if 2 <= w <= 16] if 1 in med else []
        lines.append(f"| {p} | " + " | ".join(f"{med[w]:.1f} ({p10[w]:.1f})" for w in args.widths)
                     + f" | {max(flat):.2f} | {med.get(1, float('nan')) / floor_ms:.2f} |")
    print("\n".join(lines))
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
