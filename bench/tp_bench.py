"""Tensor parallelism on CPU: TP = 1 against TP = 2 (two gloo ranks, one thread each).

For each model it times (a) the backbone alone, one forward of 1, 8 and 72 tokens
(AR step, diffusion block, quadratic self-spec cycle at b = 8) over a 96-token
cached prefix, and (b) whole decodes of every mode, tokens/s over the same prompts;
and it reports each rank's weight memory. TP = 1 runs in this process with 1 and
with 2 threads; TP = 2 is launched with ``torchrun --nproc-per-node 2`` (this file
as the worker), so both configurations use the same 2 cores.

    python bench/tp_bench.py --out bench/results/tp_bench.md
    python bench/tp_bench.py --models shipped --modes ar --prompts 2       # quick

Models: ``shipped`` (3.2M parameters) and ``wide``, a random model of 59M
parameters (hidden 768, 6 layers, 12/4 heads, MLP 3072) where the per-rank
matrix products are large enough to be worth splitting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import graphrt
from graphrt.backbone import ForwardBatch

FORWARD_WIDTHS = (1, 8, 72)
PREFIX = 96


def wide_checkpoint(root: Path) -> Path:
    """Write (once) the random ``wide`` checkpoint under ``root`` and return its directory."""
    from graphrt.frontends.models.checkpoint import random_checkpoint
    from graphrt.frontends.models.config import default_test_config

    path = root / "wide"
    if not (path / "config.json").is_file():
        cfg = default_test_config(vocab_size=4096, hidden_size=768, intermediate_size=3072, num_hidden_layers=6,
                                  num_attention_heads=12, num_key_value_heads=4, head_dim=64,
                                  max_position_embeddings=512, mask_token_id=3, block_size=8)
        random_checkpoint(path, cfg, seed=0)
    return path


def forward_ms(backbone: object, width: int, repeats: int) -> float:
    """Median ms of one backbone forward of ``width`` causal tokens over a ``PREFIX``-token cached row."""
    row = backbone.alloc_rows(1)[0]
    try:
        ones = torch.ones(1, PREFIX, dtype=torch.bool)
        backbone.forward(ForwardBatch([row], torch.arange(PREFIX)[None] % 90 + 5, torch.arange(PREFIX)[None],
                                      ones[:, :, None].expand(1, PREFIX, PREFIX).tril(), "causal", ones,
                                      ones & False, ones))
        toks = torch.arange(width)[None] % 90 + 5
        pos = PREFIX + torch.arange(width)[None]
        flags = torch.ones(1, width, dtype=torch.bool)
        batch = ForwardBatch([row], toks, pos, torch.ones(1, width, width, dtype=torch.bool).tril(), "causal",
                             flags & False, flags & False, flags)  # writes nothing: the row stays at PREFIX
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            backbone.forward(batch)
            times.append(time.perf_counter() - t)
        return 1e3 * statistics.median(times)
    finally:
        backbone.free_rows([row])


def measure(path: Path | None, tp: int, modes: list[str], prompts: int, max_new_tokens: int,
            repeats: int) -> dict[str, object]:
    """Every measurement of one model at one TP degree (run on every rank when ``tp > 1``)."""
    model = graphrt.load(path, dtype="float32", max_batch=1, tp=tp)
    bb = model.backbone
    out: dict[str, object] = {"forward_ms": {str(w): forward_ms(bb, w, repeats) for w in FORWARD_WIDTHS}}
    gen = torch.Generator().manual_seed(0)
    vocab = bb.config.vocab_size
    ids = [(torch.randint(5, vocab, (32,), generator=gen)).tolist() for _ in range(prompts)]
    out["modes"] = {}
    for mode in modes:
        compiled = graphrt.compile(mode, model)
        graphrt.generate(model, ids[0], mode=compiled, max_new_tokens=8, ignore_eos=True)  # warm-up
        tokens = forwards = 0
        t = time.perf_counter()
        for p in ids:
            res = graphrt.generate(model, p, mode=compiled, max_new_tokens=max_new_tokens, ignore_eos=True)
            tokens, forwards = tokens + len(res.tokens), forwards + res.forwards
        out["modes"][mode] = {"tokens_per_s": tokens / (time.perf_counter() - t), "tpf": tokens / forwards}
        print(f"[tp={tp} {path or 'shipped'}] {mode}: {out['modes'][mode]}", file=sys.stderr, flush=True)
    if tp > 1:
        import torch.distributed as dist

        per_rank = [0] * tp
        dist.all_gather_object(per_rank, bb.weight_bytes)
        out["weight_bytes"], out["full_weight_bytes"] = per_rank, bb.full_weight_bytes
    else:
        out["weight_bytes"] = [sum(p.numel() * p.element_size() for p in bb.model.parameters())]
    return out


def worker(args: argparse.Namespace) -> None:
    """A TP = 2 rank (under torchrun): measure, rank 0 writes the JSON."""
    results = {name: measure(None if path == "shipped" else Path(path), 2, args.modes.split(","), args.prompts,
                             args.max_new_tokens, args.repeats) for name, path in json.loads(args.paths).items()}
    if int(os.environ["RANK"]) == 0:
        Path(args.worker).write_text(json.dumps(results))


def table(results: dict[str, dict[str, dict]], modes: list[str]) -> list[str]:
    """The Markdown tables of ``results[config][model]``."""
    configs = list(results)
    lines = ["| model | config | weights per rank (MB) | " + " | ".join(f"fwd {w} tok (ms)" for w in FORWARD_WIDTHS)
             + " | " + " | ".join(f"{m} tok/s" for m in modes) + " |",
             "|---|---|---|" + "---:|" * (len(FORWARD_WIDTHS) + len(modes))]
    for model in results[configs[0]]:
        for c in configs:
            r = results[c][model]
            mb = " / ".join(f"{b / 1e6:.1f}" for b in r["weight_bytes"])
            fw = " | ".join(f"{r['forward_ms'][str(w)]:.2f}" for w in FORWARD_WIDTHS)
            tps = " | ".join(f"{r['modes'][m]['tokens_per_s']:.1f}" for m in modes)
            lines.append(f"| {model} | {c} | {mb} | {fw} | {tps} |")
    return lines


def main() -> None:
    """Run the benchmark (or, with ``--worker``, one TP = 2 rank of it)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="shipped,wide")
    ap.add_argument("--modes", default="ar,diffusion,self-spec,self-spec-quadratic")
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20, help="forwards timed per width (median)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--paths", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    modes = args.modes.split(",")
    tmp = Path(tempfile.gettempdir()) / "graphrt_tp_bench"
    tmp.mkdir(parents=True, exist_ok=True)
    paths = {name: ("shipped" if name == "shipped" else str(wide_checkpoint(tmp))) for name in args.models.split(",")}
    results: dict[str, dict[str, dict]] = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results[f"TP=1, {threads} thread{'s' * (threads > 1)}"] = {
            name: measure(None if p == "shipped" else Path(p), 1, modes, args.prompts, args.max_new_tokens,
                          args.repeats) for name, p in paths.items()}
    out_json = tmp / "tp2.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
           "--worker", str(out_json), "--paths", json.dumps(paths), "--modes", args.modes, "--prompts",
           str(args.prompts), "--max-new-tokens", str(args.max_new_tokens), "--repeats", str(args.repeats)]
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    results["TP=2 (gloo), 1 thread per rank"] = json.loads(out_json.read_text())
    command = "python bench/tp_bench.py " + " ".join(sys.argv[1:])
    lines = [f"Command: `{command}`", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} shared cores; float32; forwards over a {PREFIX}-token "
             f"cached prefix (median of {args.repeats}); decodes: {args.prompts} random 32-token prompts, "
             f"{args.max_new_tokens} new tokens, EOS ignored.", "", *table(results, modes), ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
