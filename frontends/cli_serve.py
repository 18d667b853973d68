"""``graphrt serve``: an OpenAI-compatible HTTP server over one mixed-mode session."""

from __future__ import annotations

import argparse
import sys

from graphrt.frontends.policies import MODES


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``serve``."""
    p = sub.add_parser("serve", help="serve a model over OpenAI's HTTP API",
                       description="Serve a model over OpenAI's HTTP API (completions, chat, streaming, metrics).")
    p.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    p.add_argument("--served-model-name", default=None, help="model name clients ask for (default: the directory's)")
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``graphrt serve``."""
    import graphrt
    from graphrt.frontends.serving import serve
    from graphrt.frontends.serving.lockstep import LockstepError

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port: expected an int in [0, 65535], found {args.port}")
    # Tensor parallel compiles each bucket on its first call, which every rank makes at the same step: a
    # background compile would run the collectives of its warm-up calls at a different moment on each rank.
    compile_mode = False if not args.compile else "background" if args.tp == 1 else True
    model = graphrt.load(args.model, dtype=args.dtype, device=args.device, max_batch=args.max_batch,
                         compile=compile_mode, max_seq_len=args.max_seq_len, tp=args.tp, tp_check=args.tp_check)
    try:
        serve(model, host=args.host, port=args.port, log_level=args.log_level, name=args.served_model_name,
              max_queue=args.max_queue, default_mode=args.default_mode, block_length=args.block_length,
              threshold=args.threshold)
    except LockstepError as exc:
        print(f"graphrt serve: error: {exc}", file=sys.stderr)
        return 1
    return 0
