"""``graphrt generate``: decode a prompt with one of the modes."""

from __future__ import annotations

import argparse
import json
import sys

from graphrt.frontends.policies import MODES


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``generate``."""
    p = sub.add_parser("generate", help="decode a prompt", description="Decode a prompt with one of the modes.")
    p.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    p.add_argument("--mode", default="ar", choices=MODES)
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--min-new-tokens", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--block-length", type=int, default=None, help="default: the checkpoint's block_size")
    p.add_argument("--threshold", type=float, default=None,
                   help="diffusion commit threshold (default 0.9) / self-spec draft threshold (default 0)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--dtype", default=None, help="float32, float64, bfloat16, float16 (default: as stored)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="run the backbone under torch.compile")
    p.add_argument("--opt-level", type=int, default=1, choices=(0, 1, 2))
    p.add_argument("--json", default=None, metavar="FILE", help="write a JSON record ('-' for standard output)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``graphrt generate``."""
    import graphrt

    if not args.prompt:
        raise ValueError("--prompt: expected non-empty text, found an empty prompt")
    model = graphrt.load(args.model, dtype=args.dtype, device=args.device, max_batch=1, compile=args.compile)
    result = graphrt.generate(
        model, args.prompt, mode=args.mode, block_length=args.block_length, threshold=args.threshold,
        opt_level=args.opt_level, max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens,
        temperature=args.temperature, seed=args.seed, top_k=args.top_k, top_p=args.top_p,
        stop_strings=tuple(args.stop))
    record = result.to_record()
    record["prompt"] = args.prompt
    record["model"] = model.path
    if args.json == "-":
        json.dump(record, sys.stdout, indent=2)
        print()
    else:
        print(args.prompt + (result.text or " ".join(map(str, result.tokens))))
        print(f"\n[{args.mode}] {len(result.tokens)} tokens, {result.forwards} forwards, TPF {result.tpf:.2f}, "
              f"{result.seconds:.2f} s ({result.finish_reason})", file=sys.stderr)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(record, f, indent=2)
    return 0
