"""Side-by-side decode benchmark: graphrt in every mode against transformers and hand-written loops.

Every contender runs in this one process on the same weights, dtype, threads and
prompts; contenders are interleaved per prompt (the order rotates from prompt to
prompt) so that machine noise hits them alike; one warm-up run per contender and
batch is excluded; figures are medians over prompts (batch 1) or prompt groups
(batch 8). EOS is ignored everywhere, so every contender decodes the same number
of tokens. Also measured here: the forward cost by width over a 100-token prefix
(:mod:`forward_cost`), a context-length sweep (:mod:`context_sweep`), and a
roofline projection for the released 8B model on one GPU (:mod:`projection`).

    graphrt bench                                   # everything (about 25 minutes on 2 cores)
    graphrt bench --contenders graphrt-eager,transformers --modes ar,self-spec --prompts 2 \\
        --batches 1 --no-sweep                      # a quick look (a couple of minutes)
    python bench/side_by_side.py --help             # the same, from a source checkout
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import graphrt
from graphrt.frontends.cli.output import write_json
from graphrt.frontends.models.loader import parse_dtype

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_side_by_side  # noqa: E402
from memory import PeakRSS  # noqa: E402
from contenders import (REFERENCE_MODES, GraphrtContender, HandLoopContender,  # noqa: E402
                        ReferenceLoopContender, RunOutput, TransformersContender, hf_mistral)

MODES = ("ar", "diffusion", "self-spec", "self-spec-quadratic")
CONTENDERS = ("graphrt-eager", "graphrt-compiled", "hand-loop-eager", "hand-loop-compiled", "transformers",
              "transformers-compiled", "reference")
HOTPATH_DEFAULTS = {"contenders": ",".join(CONTENDERS), "modes": ",".join(MODES), "batches": "1,8", "prompts": 5,
                    "forward_cost_repeats": 30}
SCHEMA_KEYS = ("contender", "backend", "mode", "batch", "tokens_per_s", "tpf", "ms_per_forward", "peak_rss_mb")


# ----------------------------------------------------------------------------- machine and memory
def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}"}


# ----------------------------------------------------------------------------- prompts
def heldout_prompts(model: graphrt.Model, n: int, length: int, seed: int = 0) -> list[list[int]]:
    """``n`` prompts of exactly ``length`` tokens: held-out corpus text with a tokenizer, else random ids."""
    if model.tokenizer is not None:
        from graphrt.frontends.training.evaluate import make_prompts

        try:
            pool = [p.ids for p in make_prompts(model.tokenizer, 4 * n, length) if len(p.ids) == length]
        except (ValueError, OSError):
            pool = []
        if len(pool) >= n:
            return pool[:n]
    cfg = model.config
    special = {cfg.mask_token_id, cfg.bos_token_id, cfg.eos_token_id}
    allowed = [t for t in range(cfg.vocab_size) if t not in special]
    rng = random.Random(seed)
    return [[rng.choice(allowed) for _ in range(length)] for _ in range(n)]


# ----------------------------------------------------------------------------- the run
@dataclass
class Tally:
    """Every timed run of one contender at one batch size."""

    contender: Any
    batch: int
    rates: list[float] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)
    emitted: int = 0
    forwards: int = 0
    seconds: float = 0.0
    forward_seconds: float = 0.0
    calls: list[tuple[int, int, float]] = field(default_factory=list)
    peak_rss_mb: float = 0.0

    def add(self, out: RunOutput, peak: float) -> None:
        """Fold in one run."""
        n = sum(len(t) for t in out.tokens)
        self.rates.append(n / out.seconds)
        self.tokens += out.tokens
        self.emitted += n
        self.forwards += out.forwards
        self.seconds += out.seconds
        self.forward_seconds += sum(c[2] for c in out.calls)
        self.calls += out.calls
        self.peak_rss_mb = max(self.peak_rss_mb, peak)

    def record(self) -> dict[str, Any]:
        """The JSON record (see :data:`SCHEMA_KEYS`)."""
        widths: dict[int, list[float]] = {}
        for _, w, s in self.calls:
            widths.setdefault(w, []).append(s * 1e3)
        c = self.contender
        return {
            "contender": c.name, "backend": c.backend, "mode": c.mode, "batch": self.batch,
            "tokens_per_s": statistics.median(self.rates), "tokens_per_s_runs": self.rates,
            "tpf": self.emitted / self.forwards if self.forwards else 0.0,
            "tokens": self.emitted, "forwards_per_request": self.forwards / (len(self.tokens) or 1),
            "backbone_calls": len(self.calls),
            "ms_per_forward": {str(w): statistics.median(v) for w, v in sorted(widths.items())},
            "forwards_by_width": {str(w): len(v) for w, v in sorted(widths.items())},
            "outside_forward_share": 1 - self.forward_seconds / self.seconds if self.seconds else 0.0,
            "peak_rss_mb": self.peak_rss_mb,
        }


def build_contenders(args: argparse.Namespace) -> tuple[dict[int, list[Any]], dict[str, graphrt.Model]]:
    """The contenders to run at each batch size (weights loaded once), and graphrt's models by backend."""
    chosen = set(args.contenders.split(","))
    modes = args.modes.split(",")
    unknown = (chosen - set(CONTENDERS)) | (set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"bench: expected contenders from {CONTENDERS} and modes from {MODES}, "
                         f"found unknown {sorted(unknown)}")
    dtype = args.dtype
    max_batch = max(args.batch_sizes)
    models: dict[str, graphrt.Model] = {}
    for backend in ("eager", "compiled"):
        if {f"graphrt-{backend}", f"hand-loop-{backend}"} & chosen:
            compiled = "freeze" if args.compile_mode == "freeze" else True
            models[backend] = graphrt.load(args.model, dtype=dtype, max_batch=max_batch,
                                           compile=compiled if backend == "compiled" else False)
    any_model = next(iter(models.values()), None) or graphrt.load(args.model, dtype=dtype, max_batch=1)
    path, cfg = any_model.path, any_model.config
    tdtype = parse_dtype(dtype) or torch.float32
    per_batch: dict[int, list[Any]] = {b: [] for b in args.batch_sizes}
    shared: list[Any] = []
    for backend, model in models.items():
        if f"graphrt-{backend}" in chosen:
            shared += [GraphrtContender(model, m, backend, threshold=args.threshold) for m in modes]
        if f"hand-loop-{backend}" in chosen:
            shared.append(HandLoopContender(model, backend))
    if "transformers" in chosen:
        shared.append(TransformersContender(hf_mistral(path, tdtype), fast=False))
    if "transformers-compiled" in chosen:
        shared.append(TransformersContender(hf_mistral(path, tdtype), fast=True))
    for b in args.batch_sizes:
        per_batch[b] += shared
    if "reference" in chosen and 1 in per_batch:
        ref = hf_mistral(path, tdtype)
        per_batch[1] += [ReferenceLoopContender(ref, m, cfg.block_size, cfg.mask_token_id, cfg.eos_token_id,
                                                threshold=args.threshold)
                         for m in REFERENCE_MODES if m in modes]
    return per_batch, models


def run_side_by_side(args: argparse.Namespace, log: Any = print, on_batch: Any = None
                     ) -> tuple[list[dict[str, Any]], dict[str, float], dict[str, graphrt.Model]]:
    """Run every contender interleaved; returns (records, token agreement, graphrt's models by backend).

    ``on_batch(records)``, if given, receives the records of every batch size finished so far.
    """
    per_batch, models = build_contenders(args)
    n_prompts = 1 + args.prompts * max(args.batch_sizes)  # one warm-up prompt, then the timed ones
    pool = heldout_prompts(graphrt.load(args.model, max_batch=1), n_prompts, args.prompt_tokens)
    warm, rest = pool[0], pool[1:]
    records: list[dict[str, Any]] = []
    tallies: dict[tuple[int, int], Tally] = {}
    for batch, contenders in per_batch.items():
        groups = [rest[i * batch:(i + 1) * batch] for i in range(args.prompts)]
        for c in contenders:  # warm-up: compiles, lazy imports, allocator growth
            t0 = time.perf_counter()
            c.run([warm] * batch, args.max_new_tokens)
            log(f"  warm-up {c.name} {c.mode} batch {batch}: {time.perf_counter() - t0:.1f} s")
        for k, c in enumerate(contenders):
            tallies[(batch, k)] = Tally(c, batch)
        for g, group in enumerate(groups):
            order = list(range(len(contenders)))
            order = order[g % len(order):] + order[:g % len(order)]  # rotate: no contender always first
            for k in order:
                with PeakRSS() as mem:
                    out = contenders[k].run(group, args.max_new_tokens)
                tallies[(batch, k)].add(out, mem.peak)
            log(f"  batch {batch}: prompt group {g + 1}/{len(groups)} done")
        if on_batch is not None:
            on_batch([t.record() for t in tallies.values()])
    for t in tallies.values():
        records.append(t.record())
    return records, token_agreement(tallies), models


def token_agreement(tallies: dict[tuple[int, int], Tally]) -> dict[str, float]:
    """Fraction of prompts where a contender's tokens equal graphrt's (eager if run), same mode and batch."""
    want: dict[tuple[int, str], Tally] = {}
    for t in sorted(tallies.values(), key=lambda t: t.contender.backend != "eager"):
        if isinstance(t.contender, GraphrtContender):
            want.setdefault((t.batch, t.contender.mode), t)
    agree: dict[str, float] = {}
    for t in tallies.values():
        ref = want.get((t.batch, t.contender.mode))
        if ref is None or ref is t:
            continue
        same = sum(a == b for a, b in zip(ref.tokens, t.tokens))
        agree[f"{t.contender.name} {t.contender.mode} batch {t.batch}"] = same / len(t.tokens)
    return agree


# ----------------------------------------------------------------------------- report
def find(records: list[dict[str, Any]], contender: str, mode: str, batch: int) -> dict[str, Any] | None:
    """The record of (contender, mode, batch), or None."""
    return next((r for r in records if r["contender"] == contender and r["mode"] == mode and r["batch"] == batch),
                None)


def ratios(records: list[dict[str, Any]], forward_cost: list[dict[str, Any]] | None,
           sweep: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The issue's target ratios that this run measured, each with its target and whether it is met."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, target: float, higher: bool = True) -> None:
        if value is not None:
            out.append({"ratio": name, "value": value, "target": f"{'>=' if higher else '<='} {target:g}",
                        "met": bool(value >= target if higher else value <= target)})

    def tps(contender: str, mode: str, batch: int) -> float | None:
        r = find(records, contender, mode, batch)
        return r["tokens_per_s"] if r else None

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    for backend in ("eager", "compiled"):
        g = f"graphrt {backend}"
        for batch, target in ((1, 2.0), (8, 1.2)):
            add(f"{g} ar / transformers generate, batch {batch}", div(tps(g, "ar", batch),
                                                                      tps("transformers generate", "ar", batch)),
                target)
        add(f"{g} self-spec / {g} ar, batch 1", div(tps(g, "self-spec", 1), tps(g, "ar", 1)), 1.0)
        for batch in (1, 8):
            hand = tps(f"hand loop {backend}", "ar", batch)
            add(f"runtime overhead of {g} ar over hand loop {backend}, batch {batch}",
                div(hand, tps(g, "ar", batch)) and div(hand, tps(g, "ar", batch)) - 1, 0.10, higher=False)
        for mode in MODES:
            r = find(records, g, mode, 1)
            if r:
                add(f"{g} {mode}: wall time outside backbone forwards, batch 1", r["outside_forward_share"], 0.10,
                    higher=False)
    for fc in forward_cost or []:
        add(f"{fc['backend']} backbone: 8-token / 1-token forward over a {fc['prefix']}-token prefix",
            fc["ms"]["8"] / fc["ms"]["1"], 1.3, higher=False)
    if sweep:
        from context_sweep import growth

        g = growth(sweep)
        for backend in [k for k in g if k != "transformers generate"]:
            if "transformers generate" in g:
                add(f"context growth {g[backend]['from']}->{g[backend]['to']} tokens: {backend} / transformers",
                    g[backend]["growth"] / g["transformers generate"]["growth"], 1.0, higher=False)
                slower = [row for row in sweep if row["contender"] == backend and row["ms_per_token"] >=
                          next(x["ms_per_token"] for x in sweep if x["contender"] == "transformers generate"
                               and x["prompt_tokens"] == row["prompt_tokens"])]
                out.append({"ratio": f"{backend} faster than transformers at every sweep length",
                            "value": f"slower at {[row['prompt_tokens'] for row in slower]}" if slower else "yes",
                            "target": "yes", "met": not slower})
    return out


def table(records: list[dict[str, Any]], agree: dict[str, Any], mach: dict[str, Any]) -> str:
    """The printed (Markdown) table."""
    base = {r["batch"]: r["tokens_per_s"] for r in records if r["contender"] == "transformers generate"}
    widths = sorted({int(w) for r in records for w in r["ms_per_forward"]})
    lines = [f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['threads']} torch threads; torch {mach['torch']}, "
             f"transformers {mach['transformers']}.", "",
             "| contender | mode | batch | TPF | tokens/s | vs transformers | ms/forward by width | "
             "outside forwards | peak RSS MiB |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in sorted(records, key=lambda r: (r["batch"], r["contender"].split()[0] != "transformers",
                                            r["contender"], MODES.index(r["mode"]))):
        rel = f"{r['tokens_per_s'] / base[r['batch']]:.2f}x" if r["batch"] in base else "-"
        ms = ", ".join(f"{w}: {r['ms_per_forward'][str(w)]:.2f}" for w in widths if str(w) in r["ms_per_forward"])
        lines.append(f"| {r['contender']} | {r['mode']} | {r['batch']} | {r['tpf']:.2f} | {r['tokens_per_s']:.1f} | "
                     f"{rel} | {ms} | {100 * r['outside_forward_share']:.0f}% | {r['peak_rss_mb']:.0f} |")
    if agree:
        lines += ["", "Same tokens as graphrt in the same mode (fraction of prompts): " +
                  "; ".join(f"{k}: {v:.2f}" for k, v in sorted(agree.items()))]
    return "\n".join(lines)


def summary_table(records: list[dict[str, Any]]) -> str:
    """Compact Markdown: one row per (contender, mode), tokens/s at each batch and the ratio to transformers."""
    batches = sorted({r["batch"] for r in records})
    base = {r["batch"]: r["tokens_per_s"] for r in records if r["contender"] == "transformers generate"}
    keys = list(dict.fromkeys((r["contender"], r["mode"]) for r in sorted(
        records, key=lambda r: (r["contender"].split()[0] != "transformers", r["contender"], MODES.index(r["mode"])))))
    lines = ["| contender | mode | TPF (batch 1) | " + " | ".join(f"batch {b} tok/s (vs transformers)" for b in batches)
             + " |", "|---|---|---:|" + "---:|" * len(batches)]
    for contender, mode in keys:
        cells = []
        for b in batches:
            r = find(records, contender, mode, b)
            cells.append("-" if r is None else f"{r['tokens_per_s']:.0f} ({r['tokens_per_s'] / base[b]:.2f}x)"
                         if b in base else f"{r['tokens_per_s']:.0f}")
        r1 = find(records, contender, mode, batches[0])
        lines.append(f"| {contender} | {mode} | {r1['tpf']:.2f} | " + " | ".join(cells) + " |" if r1 else
                     f"| {contender} | {mode} | - | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio_lines(rs: list[dict[str, Any]]) -> str:
    """Markdown bullet list of the target ratios."""
    def fmt(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    return "\n".join(f"- {r['ratio']}: {fmt(r['value'])} (target {r['target']}): {'met' if r['met'] else 'missed'}"
                     for r in rs)


# ----------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared by ``graphrt bench`` and ``python bench/side_by_side.py``)."""
    p.add_argument("--model", default=None, help="model directory (default: the shipped model), or a real model: "
                   "a name (smollm2), a GGUF file or a transformers checkpoint (see --suite)")
    p.add_argument("--contenders", default=None, help=f"comma list from {', '.join(CONTENDERS)} (real models: "
                   f"{', '.join(real_side_by_side.CONTENDERS)})")
    p.add_argument("--modes", default=None, help="graphrt modes (comma list; default: every mode the model has)")
    p.add_argument("--batches", default=None, help="batch sizes (comma list; default 1,8, real models 1,4)")
    p.add_argument("--prompts", type=int, default=None, help="timed prompts (batch 1) / prompt groups (batch > 1); "
                   "default 5 (real models: prompts per kind, default 8)")
    p.add_argument("--prompt-tokens", type=int, default=96)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threshold", type=float, default=0.9, help="diffusion commit threshold")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--forward-cost-repeats", type=int, default=None,
                   help="0 skips the forward-cost probe (default 30, real models 10)")
    p.add_argument("--compile-mode", default="default", choices=("default", "freeze"),
                   help="the compiled contenders' backbone: compile=True, or compile=\"freeze\" (weight freezing)")
    p.add_argument("--no-sweep", action="store_true", help="skip the context-length sweep")
    p.add_argument("--sweep-lengths", default="64,1024,2048,3968")
    p.add_argument("--sweep-positions", type=int, default=4096)
    p.add_argument("--sweep-new-tokens", type=int, default=32)
    p.add_argument("--sweep-repeats", type=int, default=3)
    p.add_argument("--json", default=None, metavar="FILE", help="write every record as JSON")
    p.add_argument("--plot", default=None, metavar="PNG", help="write the chart")
    p.add_argument("--markdown", default=None, metavar="FILE", help="write the table and ratios as Markdown")
    real_side_by_side.add_arguments(p, shared=False)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark as configured by :func:`add_arguments`; returns 0."""
    if real_side_by_side.wants_real(args):
        return real_side_by_side.run(args)
    from context_sweep import run_sweep
    from forward_cost import forward_cost
    from projection import project, projection_table

    for key, default in HOTPATH_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch_sizes = [int(b) for b in args.batches.split(",")]
    torch.manual_seed(0)
    mach = machine()
    command = "graphrt bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:])
    print(f"side by side: {args.contenders} / modes {args.modes} / batches {args.batches}", flush=True)
    def partial(recs: list[dict[str, Any]]) -> None:  # a long run keeps what it measured if stopped later
        write_json(args.json, {"command": command, "machine": mach, "partial": True, "records": recs})

    records, agree, models = run_side_by_side(args, log=lambda s: print(s, flush=True),
                                              on_batch=partial if args.json not in (None, "-") else None)
    fc = []
    if args.forward_cost_repeats:
        print("forward cost by width ...", flush=True)
        fc = forward_cost(models or {"eager": graphrt.load(args.model, dtype=args.dtype, max_batch=1)},
                          repeats=args.forward_cost_repeats)
    sweep = None
    if not args.no_sweep:
        print("context sweep ...", flush=True)
        sweep = run_sweep(args.model, [int(x) for x in args.sweep_lengths.split(",")], args.sweep_positions,
                          args.sweep_new_tokens, args.sweep_repeats, args.dtype,
                          compiled="graphrt-compiled" in args.contenders,
                          log=lambda s: print(s, flush=True))
    proj = project(records)
    rs = ratios(records, fc, sweep)
    text = "\n\n".join(x for x in [
        summary_table(records),
        table(records, agree, mach),
        "Forward cost by width (ms, median):\n" + "\n".join(
            f"- {f['backend']} backbone, {f['prefix']}-token prefix: " +
            ", ".join(f"{w} tokens {ms:.2f}" for w, ms in f["ms"].items()) for f in fc) if fc else "",
        ("Context sweep (ms per token, batch 1, prefill included):\n" +
         __import__("context_sweep").sweep_table(sweep)) if sweep else "",
        "Target ratios:\n" + ratio_lines(rs),
        projection_table(proj)] if x)
    print("\n" + text)
    doc = {"command": command, "machine": mach, "config": {k: v for k, v in vars(args).items() if k != "func"},
           "records": records, "same_tokens": agree, "forward_cost": fc, "context_sweep": sweep,
           "projection": proj, "ratios": rs}
    write_json(args.json, doc)
    if args.markdown:
        Path(args.markdown).write_text(f"Command: `{command}`\n\n{text}\n")
    if args.plot:
        from chart import plot

        plot(doc, args.plot)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python bench/side_by_side.py``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
