"""Resident memory of ``graphrt serve`` under N concurrent chat requests (SmolLM2 by default).

Starts a server on a free local port, waits for it, reads its RSS (idle), sends ``--streams`` chat
completions at once (code-edit and chat prompts from ``bench/prompts/``) through the official ``openai``
client, then reads the server's peak RSS (``VmHWM``, which includes loading) and its RSS after the requests.

Run: ``python bench/serve_memory.py [--model smollm2] [--streams 16] [--max-tokens 16] [--mode ar]``.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

PROMPTS = Path(__file__).parent / "prompts"


def _status_mib(pid: int, key: str) -> float:
    """``key`` (``VmRSS``, ``VmHWM``) of process ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(f"/proc/{pid}/status: expected a {key} line, found none")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--mode", default="ar")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["graphrt", "serve", "--model", args.model, "--port", str(port), "--max-batch",
                               str(max(args.streams, 1)), "--default-mode", args.mode],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        for _ in range(600):
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                time.sleep(0.5)
        idle = _status_mib(server.pid, "VmRSS")
        prompts = [json.loads(line) for kind in ("code_edit", "chat")
                   for line in (PROMPTS / f"{kind}.jsonl").read_text().splitlines() if line.strip()]
        model = client.models.list().data[0].id

        def one(i: int) -> int:
            reply = client.chat.completions.create(model=model, messages=prompts[i % len(prompts)]["messages"],
                                                   max_tokens=args.max_tokens, temperature=0)
            return reply.usage.prompt_tokens

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.streams) as pool:
            prompt_tokens = sum(pool.map(one, range(args.streams)))
        print(f"{args.model}, {args.streams} streams ({args.mode}, {prompt_tokens} prompt tokens, {args.max_tokens} new "
              f"tokens each, {time.perf_counter() - t0:.1f} s): RSS idle {idle:.0f} MiB, peak "
              f"{_status_mib(server.pid, 'VmHWM'):.0f} MiB (loading included), after {_status_mib(server.pid, 'VmRSS'):.0f} MiB")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
