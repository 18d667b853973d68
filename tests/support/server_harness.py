"""Real server processes for the server tests: started on a free port, waited for, stopped.

Run as a script, this module serves the shipped model (float64) with two test
changes: its tokenizer has no chat template, and its backbone's ``forward`` raises for any batch
holding the token id :data:`POISON` or reaching :data:`POISON_POSITION` (a failing step, injected),
and sleeps :data:`HANG_S` seconds for one holding :data:`HANG` (a stuck step), and with
``--slow-from N`` :data:`SLOW_S` seconds for one reaching position N (a slow request). It takes
``graphrt serve``'s access and limit options (``--api-key``, ``--max-body-bytes``, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx

POISON = 4095  # a batch holding this token id makes the harness backbone's forward raise
POISON_POSITION = 150  # ... and so does one that reaches this position
HANG = 4094  # a batch holding this token id makes the harness backbone's forward sleep HANG_S seconds
HANG_S = 3.0
SLOW_S = 0.05  # --slow-from N: a batch reaching position N or beyond makes forward sleep this long
MODEL_NAME = "model"  # the shipped model's directory name, which the server serves it under


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(args: list[str], harness: bool = False, timeout: float = 90.0) -> Iterator[str]:
    """Run a server process; yields its base URL (``http://127.0.0.1:PORT``) once ``/health`` answers.

    ``harness`` runs this module (no chat template, failing backbone) instead of ``graphrt serve``.
    """
    cmd = [sys.executable, __file__] if harness else [sys.executable, "-m", "graphrt.frontends.cli", "serve"]
    with server_process(cmd, args, timeout) as (url, _):
        yield url


def torchrun_serve(tp: int) -> list[str]:
    """The command that serves with ``--tp tp`` under torchrun (one process per rank, a free rendezvous port)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(tp),
            "-m", "graphrt", "serve", "--tp", str(tp)]


@contextlib.contextmanager
def server_process(cmd: list[str], args: list[str], timeout: float = 90.0, env: dict[str, str] | None = None,
                   ) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``cmd --port PORT args`` (``env``: extra environment variables); yields (base URL, process) once
    ``/health`` answers; terminates it after."""
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.Popen(cmd + ["--port", str(port)] + args, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{proc.stdout.read()}")  # type: ignore
            try:
                if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer /health within {timeout} s")
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def metric(url: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample of the server at ``url`` (0 when absent)."""
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    for line in httpx.get(url + "/metrics").text.splitlines():
        if not line.startswith("#") and line.rsplit(" ", 1)[0] == want:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class FailingBackbone:
    """A backbone proxy whose ``forward`` raises for a batch holding :data:`POISON` or :data:`POISON_POSITION`."""

    def __init__(self, inner: Any, slow_from: int | None = None) -> None:
        self._inner = inner
        self._slow_from = slow_from

    def forward(self, batch: Any) -> Any:
        if bool((batch.tokens == POISON).any()) or bool((batch.positions == POISON_POSITION).any()):
            raise RuntimeError("injected backbone failure")
        if bool((batch.tokens == HANG).any()):
            time.sleep(HANG_S)
        if self._slow_from is not None and bool((batch.positions >= self._slow_from).any()):
            time.sleep(SLOW_S)
        return self._inner.forward(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def main() -> None:
    """Serve the shipped model without its chat template, with the failing backbone."""
    import graphrt
    from graphrt.frontends.cli.serve import add_guard_arguments, guard_options
    from graphrt.frontends.serving import serve

    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--max-queue", type=int, default=64)
    p.add_argument("--slow-from", type=int, default=None)
    add_guard_arguments(p)
    args = p.parse_args()
    model = graphrt.load(dtype="float64", max_batch=args.max_batch)
    model.tokenizer.hf.chat_template = None
    model.backbone = FailingBackbone(model.backbone, args.slow_from)
    serve(model, port=args.port, name=Path(model.path).name, max_queue=args.max_queue, **guard_options(args))


if __name__ == "__main__":
    main()
