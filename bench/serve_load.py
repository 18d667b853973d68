"""Load and soak test of ``graphrt serve``: many streamed requests of mixed modes and lengths.

Starts a local server (or uses ``--url``), sends ``--requests`` streamed
completions with at most ``--concurrency`` in flight through the official
``openai`` client (modes, prompt lengths, ``max_tokens`` and temperatures
mixed, seeded), and reports aggregate tokens/s, p50/p99 latency and time to
first token per mode, TPF per mode, and the server's resident memory at the
start, along the way and at the end.

    OMP_NUM_THREADS=1 python bench/serve_load.py --requests 1000 --concurrency 16 \\
        --out bench/results/serve_load.md
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

MODES = ("ar", "diffusion", "self-spec", "self-spec-quadratic")
MAX_TOKENS = (8, 16, 32, 48)


def prompts(n: int, rng: random.Random) -> list[str]:
    """``n`` prompts: windows of 1 to 8 lines of standard-library source (varied lengths)."""
    import json.decoder
    import textwrap

    lines = inspect.getsource(json.decoder).splitlines(keepends=True) + \
        inspect.getsource(textwrap).splitlines(keepends=True)
    out = []
    for _ in range(n):
        k = rng.randint(1, 8)
        start = rng.randrange(0, len(lines) - k)
        text = "".join(lines[start:start + k])
        out.append(text if text.strip() else "def main():\n")
    return out


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` (MiB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def pct(xs: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``xs``, nearest rank."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def one(client: openai.AsyncOpenAI, model: str, prompt: str, mode: str, max_tokens: int, temperature: float,
              seed: int) -> dict:
    t0 = time.perf_counter()
    ttft = None
    usage = stats = None
    stream = await client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, temperature=temperature, seed=seed, stream=True,
        stream_options={"include_usage": True}, extra_body={"mode": mode})
    async for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].text:
            ttft = time.perf_counter() - t0
        if chunk.choices and chunk.choices[0].finish_reason:
            stats = chunk.model_extra.get("graphrt")
        if chunk.usage is not None:
            usage = chunk.usage
    latency = time.perf_counter() - t0
    return {"mode": mode, "latency": latency, "ttft": ttft if ttft is not None else latency,
            "tokens": usage.completion_tokens, "forwards": stats["forwards"]}


async def run_load(url: str, model: str, n: int, concurrency: int, seed: int, pid: int | None) -> dict:
    rng = random.Random(seed)
    texts = prompts(n, rng)
    jobs = [(texts[i], MODES[i % len(MODES)], rng.choice(MAX_TOKENS), rng.choice([0.0, 0.8]), rng.randrange(1 << 30))
            for i in range(n)]
    rng.shuffle(jobs)
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)
    rss = [(0, rss_mib(pid))] if pid else []
    done: list[dict] = []
    errors: list[str] = []

    async def guarded(job: tuple) -> None:
        async with gate:
            try:
                done.append(await one(client, model, *job))
            except openai.APIError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            if pid and len(done) % 100 == 0 and rss[-1][0] != len(done):
                rss.append((len(done), rss_mib(pid)))

    t0 = time.perf_counter()
    await asyncio.gather(*(guarded(j) for j in jobs))
    wall = time.perf_counter() - t0
    if pid:
        rss.append((len(done), rss_mib(pid)))
    return {"wall": wall, "done": done, "errors": errors, "rss": rss}


def report(res: dict, args: argparse.Namespace, backbone_calls: float) -> str:
    done = res["done"]
    tokens = sum(d["tokens"] for d in done)
    lines = [f"# `graphrt serve` under load ({len(done)} requests, concurrency {args.concurrency})", "",
             f"Command: `OMP_NUM_THREADS=1 python bench/serve_load.py --requests {args.requests} "
             f"--concurrency {args.concurrency} --max-batch {args.max_batch}`  ",
             "Machine: 2 shared x86-64 cores (other jobs running), shipped model (float32), CPU.", "",
             f"- wall time {res['wall']:.1f} s, {tokens} completion tokens: **{tokens / res['wall']:.0f} tokens/s** "
             f"aggregate, {len(done) / res['wall']:.1f} requests/s; errors: {len(res['errors'])}",
             f"- backbone calls {backbone_calls:.0f} for {sum(d['forwards'] for d in done)} request forwards "
             f"(requests of different modes share calls)", ""]
    if res["rss"]:
        lines.append("- server RSS (MiB) by requests done: " + ", ".join(f"{k}: {v:.0f}" for k, v in res["rss"]))
        lines.append("")
    lines += ["| mode | requests | tokens | TPF | latency p50 (s) | latency p99 (s) | TTFT p50 (s) | TTFT p99 (s) |",
              "|---|---|---|---|---|---|---|---|"]
    for mode in MODES:
        ds = [d for d in done if d["mode"] == mode]
        if not ds:
            continue
        lat, ttft = [d["latency"] for d in ds], [d["ttft"] for d in ds]
        tpf = sum(d["tokens"] for d in ds) / max(1, sum(d["forwards"] for d in ds))
        lines.append(f"| {mode} | {len(ds)} | {sum(d['tokens'] for d in ds)} | {tpf:.2f} | {pct(lat, .5):.2f} | "
                     f"{pct(lat, .99):.2f} | {pct(ttft, .5):.3f} | {pct(ttft, .99):.3f} |")
    return "\n".join(lines) + "\n"


def backbone_calls(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("graphrt_backbone_calls_total "):
            return float(line.split()[1])
    return 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=None, help="an already running server (default: start one)")
    p.add_argument("--model", default="model", help="the served model name")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=8, help="cache rows of the server started here")
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the markdown report here (and a .json beside it)")
    args = p.parse_args()
    proc = None
    url = args.url
    if url is None:
        url = f"http://127.0.0.1:{args.port}"
        proc = subprocess.Popen([sys.executable, "-m", "graphrt.frontends.cli", "serve", "--port", str(args.port),
                                 "--max-batch", str(args.max_batch), "--max-queue", str(args.requests)])
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
    try:
        calls0 = backbone_calls(url)
        res = asyncio.run(run_load(url, args.model, args.requests, args.concurrency, args.seed,
                                   proc.pid if proc else None))
        text = report(res, args, backbone_calls(url) - calls0)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    print(text)
    if res["errors"]:
        print("first errors:", *res["errors"][:5], sep="\n  ")
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            {k: v for k, v in res.items() if k != "done"} | {"requests": res["done"]}, indent=1))


if __name__ == "__main__":
    main()
