"""``graphrt serve``: an OpenAI-compatible HTTP server over one mixed-mode session."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from graphrt.frontends.policies import MODES


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``serve``."""
    p = sub.add_parser("serve", help="serve a model over OpenAI's HTTP API",
                       description="Serve a model over OpenAI's HTTP API (completions, chat, streaming, metrics).")
    p.add_argument("--model", default=None,
                   help="checkpoint directory, Llama GGUF file, or a named model (smollm2); default: the shipped model")
    p.add_argument("--served-model-name", default=None,
                   help="model name clients ask for (default: the named model's name, else the directory's or file's)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=8, help="requests active at once (cache rows)")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait for a row before a 429")
    p.add_argument("--default-mode", default="ar", choices=MODES, help="mode of requests that name none")
    p.add_argument("--block-length", type=int, default=None, help="default block length (checkpoint's block_size)")
    p.add_argument("--threshold", type=float, default=None, help="default threshold of the default mode")
    p.add_argument("--max-seq-len", type=int, default=None, help="KV-cache slots per request")
    p.add_argument("--dtype", default=None, help="float32, float64, bfloat16, float16 (default: as stored)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true",
                   help="run the backbone under torch.compile, each shape bucket compiled in the background "
                        "while its first requests run eagerly (with --tp: on its first call, on every rank)")
    p.add_argument("--tp", type=int, default=1,
                   help="tensor-parallel ranks (torchrun --nproc-per-node N -m graphrt serve --tp N ...)")
    p.add_argument("--tp-check", action="store_true", help="debug: compare forward inputs across ranks")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    add_guard_arguments(p)
    p.set_defaults(func=run)


def add_guard_arguments(p: argparse.ArgumentParser) -> None:
    """The options that bound what a client may ask, and who may ask (``serve``'s, and the test harness's)."""
    g = p.add_argument_group("access and limits")
    g.add_argument("--api-key", action="append", default=None, metavar="KEY",
                   help="a key clients must send as 'Authorization: Bearer KEY' (repeatable; default: the "
                        "comma-separated keys of $GRAPHRT_API_KEY, or none: open). Prefer the variable: "
                        "arguments are visible in the process list")
    g.add_argument("--metrics-public", action="store_true", help="serve /metrics without a key (/health always is)")
    g.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name the Host header may name (repeatable); bound to a loopback address, "
                        "only the loopback names and these are accepted")
    g.add_argument("--max-body-bytes", type=int, default=2 * 2**20, help="largest request body (default 2 MiB)")
    g.add_argument("--max-tokens", type=int, default=None,
                   help="largest max_tokens a request may ask (default: what fits the model)")
    g.add_argument("--max-messages", type=int, default=256, help="most chat messages in one request")
    g.add_argument("--request-timeout", type=float, default=600.0,
                   help="seconds a request may take from arrival to its last token (its own 'timeout' field "
                        "may ask less); then it is cancelled and told so")
    g.add_argument("--read-timeout", type=float, default=15.0,
                   help="seconds a client may take to send a request head, or pause within its body")
    g.add_argument("--keep-alive-timeout", type=float, default=5.0, help="seconds an idle connection is kept")
    g.add_argument("--max-connections", type=int, default=256, help="connections at once (then 503)")
    g.add_argument("--drain-timeout", type=float, default=30.0,
                   help="after SIGTERM, seconds the requests in flight get to finish (new ones get 503)")
    g.add_argument("--stall-timeout", type=float, default=60.0,
                   help="seconds without progress, with requests held, after which /health reports 503")


def guard_options(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`graphrt.frontends.serving.serve`'s keyword arguments from :func:`add_guard_arguments`' options.

    Raises
    ------
    ValueError
        An option out of range (naming it).
    """
    keys = args.api_key if args.api_key is not None else \
        [k.strip() for k in os.environ.get("GRAPHRT_API_KEY", "").split(",") if k.strip()]
    if any(not k.strip() for k in keys):
        raise ValueError("--api-key: expected a non-empty key, found an empty one")
    for name in ("max_body_bytes", "max_messages", "max_connections"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected an int >= 1, found {getattr(args, name)}")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ValueError(f"--max-tokens: expected an int >= 1, found {args.max_tokens}")
    for name in ("request_timeout", "read_timeout", "keep_alive_timeout", "stall_timeout"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')}: expected seconds > 0, found {getattr(args, name)}")
    if not args.drain_timeout >= 0:
        raise ValueError(f"--drain-timeout: expected seconds >= 0, found {args.drain_timeout}")
    return {"api_keys": tuple(keys), "metrics_public": args.metrics_public, "allowed_hosts": tuple(args.allowed_host),
            "max_body_bytes": args.max_body_bytes, "max_tokens": args.max_tokens, "max_messages": args.max_messages,
            "request_timeout": args.request_timeout, "read_timeout": args.read_timeout,
            "keep_alive_timeout": args.keep_alive_timeout, "max_connections": args.max_connections,
            "drain_timeout": args.drain_timeout, "stall_timeout": args.stall_timeout}


def served_name(args: argparse.Namespace) -> str | None:
    """``--served-model-name``, else the name of a named model (``--model smollm2``), else ``None`` (the path's)."""
    from pathlib import Path

    from graphrt.frontends.models.named_models import named_model

    if args.served_model_name is not None:
        return args.served_model_name
    if args.model is not None and not Path(args.model).exists() and named_model(args.model) is not None:
        return args.model
    return None


def run(args: argparse.Namespace) -> int:
    """Execute ``graphrt serve``."""
    import graphrt
    from graphrt.frontends.serving import serve
    from graphrt.frontends.serving.lockstep import LockstepError

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port: expected an int in [0, 65535], found {args.port}")
    guard = guard_options(args)
    # Tensor parallel compiles each bucket on its first call, which every rank makes at the same step: a
    # background compile would run the collectives of its warm-up calls at a different moment on each rank.
    compile_mode = False if not args.compile else "background" if args.tp == 1 else True
    model = graphrt.load(args.model, dtype=args.dtype, device=args.device, max_batch=args.max_batch,
                         compile=compile_mode, max_seq_len=args.max_seq_len, tp=args.tp, tp_check=args.tp_check)
    try:
        serve(model, host=args.host, port=args.port, log_level=args.log_level, name=served_name(args),
              max_queue=args.max_queue, default_mode=args.default_mode, block_length=args.block_length,
              threshold=args.threshold, **guard)
    except LockstepError as exc:
        print(f"graphrt serve: error: {exc}", file=sys.stderr)
        return 1
    return 0
