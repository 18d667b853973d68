"""Concurrency sweep of mode ``auto`` against every fixed mode, through ``graphrt serve``.

For each prompt kind (``chat``, ``code_edit``, ``continuation`` from ``bench/prompts/*.jsonl``, and
``mixed``: half chat, half code-edit) and each concurrency (1, 2, 4, 8, 16 streams in flight), every
mode serves the same requests, after an unreported warm-up run at that concurrency; the report gives
aggregate completion tokens per second, p50 and p99 request latency, and auto's tokens per second against
the best fixed mode at that point. One server
runs everything (the mode is a per-request field), started here with ``--default-mode auto`` so the
cost model is calibrated (or read from the cache) before the first request.

The full sweep (the README's numbers; a quiet machine, nothing else running)::

    OMP_NUM_THREADS=2 python bench/auto_sweep.py --out bench/results/auto_sweep
    python bench/auto_sweep.py --model smollm2 --out bench/results/auto_sweep_smollm2   # the real model

A quick check that it works (seconds, numbers meaningless)::

    python bench/auto_sweep.py --tiny --out /tmp/auto_sweep_tiny
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
PROMPTS = HERE / "prompts"
KINDS = ("chat", "code_edit", "continuation", "mixed")
FIXED = ("ar", "prompt-lookup", "self-spec", "self-spec-lookup", "self-spec-quadratic", "diffusion")
CONCURRENCY = (1, 2, 4, 8, 16)
_NO_CHAT: list[bool] = []  # set once the server says its model has no chat template


def load_prompts(kind: str) -> list[dict[str, Any]]:
    """Requests of one kind: ``{"messages": [...]}`` (chat endpoint) or ``{"text": ...}`` (completions).

    ``mixed`` alternates chat and code-edit requests. Without ``bench/prompts/KIND.jsonl`` the toy model's
    own kind of text stands in (windows of standard-library source as continuations, short questions).
    """
    if kind == "mixed":
        chat, edit = load_prompts("chat"), load_prompts("code_edit")
        return [x for pair in zip(chat, edit) for x in pair]
    path = PROMPTS / f"{kind}.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [{"messages": r["messages"]} if "messages" in r else {"text": r["text"]} for r in rows]
    import inspect
    import textwrap

    lines = inspect.getsource(textwrap).splitlines(keepends=True)
    if kind == "continuation":
        return [{"text": "".join(lines[i:i + 6])} for i in range(0, 96, 12)]
    if kind == "code_edit":
        return [{"messages": [{"role": "user", "content": "Rewrite this:\n" + "".join(lines[i:i + 8])}]}
                for i in range(0, 96, 12)]
    return [{"messages": [{"role": "user", "content": q}]}
            for q in ("What does textwrap do?", "Write a loop.", "Name a module.", "What is a list?")]


def pct(xs: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``xs``, nearest rank (nan when empty)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def one(client: httpx.AsyncClient, url: str, model: str, req: dict[str, Any], mode: str,
              max_tokens: int) -> tuple[int, float, dict[str, Any]]:
    """Send one request; returns ``(completion tokens, seconds, the graphrt field)``."""
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": 0, "mode": mode}
    messages = [dict(m) for m in req.get("messages", [])]
    text = req.get("text")
    t0 = time.perf_counter()
    for _ in range(12):
        if messages and not _NO_CHAT:
            r = await client.post(url + "/v1/chat/completions", json=body | {"messages": messages})
        else:
            prompt = text if text is not None else "\n\n".join(m["content"] for m in messages) + "\n\n"
            r = await client.post(url + "/v1/completions", json=body | {"prompt": prompt})
        if r.status_code == 400 and "chat template" in r.text:  # a model without one: its messages as text
            _NO_CHAT.append(True)
        elif r.status_code == 400 and "context_length_exceeded" in r.text:  # few positions: keep the tail
            if messages:
                messages[-1]["content"] = messages[-1]["content"][len(messages[-1]["content"]) // 2:]
            else:
                text = (text or "")[len(text or "") // 2:]
            t0 = time.perf_counter()
        else:
            break
    if r.status_code != 200:
        raise RuntimeError(f"{mode}: expected 200, found {r.status_code}: {r.text[:300]}")
    data = r.json()
    return data["usage"]["completion_tokens"], time.perf_counter() - t0, data.get("graphrt", {})


async def level(url: str, model: str, reqs: list[dict[str, Any]], mode: str, concurrency: int, n: int,
                max_tokens: int) -> dict[str, Any]:
    """``n`` requests with at most ``concurrency`` in flight; aggregate tok/s and latency percentiles."""
    sem = asyncio.Semaphore(concurrency)
    out: list[tuple[int, float, dict[str, Any]]] = []
    async with httpx.AsyncClient(timeout=600) as client:
        async def go(i: int) -> None:
            async with sem:
                out.append(await one(client, url, model, reqs[i % len(reqs)], mode, max_tokens))

        t0 = time.perf_counter()
        await asyncio.gather(*(go(i) for i in range(n)))
        wall = time.perf_counter() - t0
    tokens = sum(t for t, _, _ in out)
    lat = [s for _, s, _ in out]
    mix: dict[str, int] = {}
    for _, _, g in out:
        for source, d in (g.get("auto") or {}).get("sources", {}).items():
            mix[source] = mix.get(source, 0) + int(d["cycles"])
    return {"mode": mode, "concurrency": concurrency, "requests": n, "tokens": tokens, "seconds": wall,
            "tok_s": tokens / wall if wall else 0.0, "p50_s": pct(lat, 0.5), "p99_s": pct(lat, 0.99),
            "mean_tpf": statistics.mean(g.get("tpf", 0.0) for _, _, g in out) if out else 0.0, "auto_mix": mix}


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    """``graphrt serve`` on ``--port`` with enough rows for the highest concurrency; waits for /health."""
    url = f"http://127.0.0.1:{args.port}"
    cmd = [sys.executable, "-m", "graphrt", "serve", "--port", str(args.port), "--default-mode", "auto",
           "--max-batch", str(max(args.concurrency)), "--max-queue", "256"]
    if args.model:
        cmd += ["--model", args.model]
    proc = subprocess.Popen(cmd)
    for _ in range(3000):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"graphrt serve exited with {proc.returncode} before it was healthy")
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("graphrt serve was not healthy within 10 minutes")


def median_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One point's repetitions of one mode as one row: median tok/s and latencies, the choices summed."""
    mix: dict[str, int] = {}
    for r in rows:
        for k, v in r.get("auto_mix", {}).items():
            mix[k] = mix.get(k, 0) + v
    return {**rows[0], **{f: statistics.median(r[f] for r in rows) for f in ("tok_s", "p50_s", "p99_s")},
            "auto_mix": mix, "runs": [r["tok_s"] for r in rows]}


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The markdown tables: per kind, tok/s by concurrency and mode (the median of the repetitions), latency,
    and auto / best fixed (with every repetition's auto / best fixed where there are several)."""
    out = [f"# auto against fixed modes ({args.model or 'the shipped model'}, max_tokens {args.max_tokens}, "
           f"{args.requests or 'max(8, 2 x streams)'} requests per point, T = 0"
           + (f", median of {args.repeats} repetitions in alternating order" if args.repeats > 1 else "") + ")", ""]
    modes = ["auto", *args.fixed]
    for kind in args.kinds:
        out += [f"## {kind}", "", "| streams | " + " | ".join(f"{m} tok/s" for m in modes)
                + " | auto / best fixed | auto p50 / p99 s | auto mix (cycles) |",
                "|---|" + "---|" * (len(modes) + 3)]
        for c in args.concurrency:
            point = [r for r in rows if r["kind"] == kind and r["concurrency"] == c]
            at = {m: median_rows([r for r in point if r["mode"] == m]) for m in modes
                  if any(r["mode"] == m for r in point)}
            best = max((at[m]["tok_s"] for m in args.fixed if m in at), default=0.0)
            a = at.get("auto")
            ratio = f"{a['tok_s'] / best:.2f}x" if a and best else "-"
            if a and best and args.repeats > 1:  # each repetition's own ratio, against that repetition's best
                reps = sorted({r.get("repeat", 0) for r in point})
                each = [max((r["tok_s"] for r in point if r.get("repeat", 0) == k and r["mode"] != "auto"),
                            default=0.0) for k in reps]
                mine = [next((r["tok_s"] for r in point if r.get("repeat", 0) == k and r["mode"] == "auto"), 0.0)
                        for k in reps]
                ratio += " (" + ", ".join(f"{x / b:.2f}" for x, b in zip(mine, each) if b) + ")"
            lat = f"{a['p50_s']:.2f} / {a['p99_s']:.2f}" if a else "-"
            mix = ", ".join(f"{k} {v}" for k, v in sorted((a or {}).get("auto_mix", {}).items())) or "-"
            out.append(f"| {c} | " + " | ".join(f"{at[m]['tok_s']:.1f}" if m in at else "-" for m in modes)
                       + f" | {ratio} | {lat} | {mix} |")
        out.append("")
    return "\n".join(out)


def chart(rows: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    """Tokens per second against streams, one panel per kind, one line per mode (auto bold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.kinds), figsize=(4.2 * len(args.kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], args.kinds):
        for mode in ["auto", *args.fixed]:
            mine = [r for r in rows if r["kind"] == kind and r["mode"] == mode]
            pts = sorted((c, statistics.median(r["tok_s"] for r in mine if r["concurrency"] == c))
                         for c in {r["concurrency"] for r in mine})
            if pts:
                ax.plot(*zip(*pts), marker="o", label=mode, linewidth=2.8 if mode == "auto" else 1.2,
                        color="black" if mode == "auto" else None)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(args.concurrency), [str(c) for c in args.concurrency])
        ax.set_title(kind)
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("aggregate tok/s")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="served checkpoint (default: the shipped model)")
    p.add_argument("--url", default=None, help="an already running server (default: start one)")
    p.add_argument("--served-name", default=None,
                   help="the model name the server answers to (default: a named model's name, else 'model')")
    p.add_argument("--port", type=int, default=8021)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--fixed", default=",".join(FIXED), help="fixed modes to compare with")
    p.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    p.add_argument("--requests", type=int, default=None, help="requests per point (default: 2 x streams, >= 8)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of every mode per point, every other one in reverse order (the report gives medians)")
    p.add_argument("--tiny", action="store_true", help="a seconds-long check that everything runs")
    p.add_argument("--out", default=str(HERE / "results" / "auto_sweep"), help="writes OUT.json, OUT.md, OUT.png")
    args = p.parse_args()
    if args.served_name is None:  # graphrt serve answers to a named model's name (--model smollm2), else 'model'
        from graphrt.frontends.models.named_models import named_model

        named = args.model is not None and not Path(args.model).exists() and named_model(args.model) is not None
        args.served_name = args.model if named else "model"
    if args.tiny:
        args.kinds, args.fixed, args.concurrency = "chat,mixed", "ar,prompt-lookup", "1,2"
        args.requests, args.max_tokens = 2, 8
    args.kinds = [k for k in args.kinds.split(",") if k]
    args.fixed = [m for m in args.fixed.split(",") if m]
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    proc, url = (None, args.url) if args.url else start_server(args)
    rows: list[dict[str, Any]] = []
    try:
        for kind in args.kinds:
            reqs = load_prompts(kind)
            for c in args.concurrency:
                n = args.requests or max(8, 2 * c)
                # Unreported: a level's first run meets new call shapes and cache rows no run touched yet
                # (at 16 streams on SmolLM2 that cost auto a third of its rate), so warm the server up first.
                asyncio.run(level(url, args.served_name, reqs, "auto", c, c, args.max_tokens))
                modes = ["auto", *args.fixed]
                for rep in range(args.repeats):  # every other repetition in reverse: no mode always runs first
                    for mode in modes if rep % 2 == 0 else modes[::-1]:
                        r = asyncio.run(level(url, args.served_name, reqs, mode, c, n, args.max_tokens))
                        rows.append({"kind": kind, "repeat": rep, **r})
                        print(f"{kind:12s} streams {c:2d} {mode:20s} {r['tok_s']:8.1f} tok/s  p50 {r['p50_s']:.2f} s  "
                              f"p99 {r['p99_s']:.2f} s", flush=True)
    except KeyboardInterrupt:  # Ctrl-C: stop, and report the points measured so far
        print(f"interrupted after {len(rows)} points; writing them", file=sys.stderr)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = report(rows, args)
    out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "rows": rows},
                                                   indent=1), encoding="utf-8")
    chart(rows, args, out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
