"""``graphrt generate``: decode a prompt (or a conversation) with a mode or a policy file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from graphrt.frontends.policies import MODES

EXAMPLES = """examples:
  graphrt generate --mode self-spec --prompt "def parse_args("
  graphrt generate --mode diffusion --threshold 0.7 --prompt "import os" --json -
  graphrt generate --model DIR --mode self-spec-quadratic --prompt "Hi" --temperature 0.7 --seed 3
  graphrt generate --model DIR --messages chat.json --thinking-budget 64 --logprobs
  graphrt generate --policy my_policy.py --prompt "x = "        # a Python file defining `policy`
  graphrt generate --policy self_spec.json --prompt "x = "      # a graph from `graphrt show --out F.json`
  graphrt generate --mode self-spec --prompt "class A:" --trace trace.html
"""
#: Modes whose drafts or denoising fill mask tokens: the drafter adapter applies to them.
MASK_DRAFTING = ("diffusion", "self-spec", "self-spec-quadratic", "self-spec-lookup", "auto")
BLOCK_MODES = ("diffusion", "self-spec", "self-spec-quadratic")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments that choose and load the model (shared by ``generate``, ``chat``, ``show``)."""
    p.add_argument("--model", default=None, metavar="DIR|FILE.gguf|NAME",
                   help="checkpoint directory, Llama GGUF file, or a named model (smollm2); default: the shipped model")
    p.add_argument("--adapter", default=None, metavar="DIR",
                   help="PEFT LoRA drafter for self-spec drafts (default: the checkpoint's own adapter directory)")
    p.add_argument("--no-adapter", action="store_true", help="do not load the checkpoint's drafter adapter")
    p.add_argument("--dtype", default=None, help="float32, float64, bfloat16, float16 (default: as stored)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="run the backbone under torch.compile")
    p.add_argument("--linear", default="auto", choices=("auto", "eager", "packed"),
                   help="linear layers: weights prepacked for the blocked product (float32 CPU; auto: where that applies) "
                        "or F.linear on the stored weights (eager)")


def add_decode_arguments(p: argparse.ArgumentParser) -> None:
    """Mode, policy and generation parameters (shared by ``generate`` and ``chat``)."""
    p.add_argument("--mode", default=None, choices=MODES, help="decode mode (default: ar)")
    p.add_argument("--policy", default=None, metavar="FILE", help="a .py file defining a Policy, or a JSON graph")
    p.add_argument("--opt-level", type=int, default=1, choices=(0, 1, 2))
    p.add_argument("--block-length", type=int, default=None, help="diffusion/self-spec (default: the block_size)")
    p.add_argument("--threshold", type=float, default=None,
                   help="diffusion commit threshold (default 0.9) / self-spec draft threshold (default 0)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--min-new-tokens", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None,
                   help="noise seed (default 0); greedy decoding (--temperature 0) draws no noise and ignores it")
    p.add_argument("--top-k", type=int, default=None, help="with --temperature > 0")
    p.add_argument("--top-p", type=float, default=None, help="with --temperature > 0")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--stop-id", action="append", type=int, default=[], help="stop token id (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at the model's EOS ids")
    p.add_argument("--logprobs", action="store_true", help="record each token's causal log-probability")
    p.add_argument("--thinking-budget", type=int, default=None,
                   help="force the end-of-thinking token after this many tokens")
    p.add_argument("--end-think-id", type=int, default=None,
                   help="the end-of-thinking token id (default: the tokenizer's </think>)")
    p.add_argument("--json", default=None, metavar="FILE", help="write a JSON record ('-' for standard output)")
    p.add_argument("--vs-ar", action="store_true",
                   help="also decode the request with ar and print both speeds and whether the tokens agree")


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``generate``."""
    p = sub.add_parser("generate", help="decode a prompt", description="Decode a prompt with one of the modes.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    add_decode_arguments(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", default=None, help="prompt text")
    src.add_argument("--messages", default=None, metavar="FILE.json",
                     help="a conversation ([{role, content}, ...]) rendered by the tokenizer's chat template")
    p.add_argument("--trace", default=None, metavar="FILE.html|png",
                   help="draw which token each forward committed and which drafts were rejected")
    p.add_argument("--no-stream", action="store_true", help="print the text once at the end")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (torchrun --nproc-per-node N ... --tp N)")
    p.add_argument("--tp-check", action="store_true", help="debug: compare forward inputs and tokens across ranks")
    p.set_defaults(func=run)


def check_knobs(args: argparse.Namespace) -> None:
    """Refuse options that do not apply to the chosen mode (instead of ignoring them)."""
    if args.policy is not None and args.mode is not None:
        raise ValueError(f"--policy and --mode: expected one of them, found both ({args.policy}, {args.mode})")
    mode = args.mode or ("ar" if args.policy is None else None)
    where = f"--mode {mode}" if mode else f"--policy {args.policy}"
    if mode not in BLOCK_MODES:
        for flag, value in (("--block-length", args.block_length), ("--threshold", args.threshold)):
            if value is not None:
                raise ValueError(f"{flag}: applies to --mode {'/'.join(BLOCK_MODES)}, not to {where}")
    if mode not in MASK_DRAFTING and mode is not None and args.adapter is not None:
        raise ValueError(f"--adapter: the drafter applies to the modes that fill mask tokens "
                         f"({'/'.join(MASK_DRAFTING)}), not to {where}")
    if args.adapter is not None and args.no_adapter:
        raise ValueError("--adapter and --no-adapter: expected one of them, found both")
    if args.temperature == 0:  # --seed is accepted and ignored here, as OpenAI's API and transformers do
        for flag, value in (("--top-k", args.top_k), ("--top-p", args.top_p)):
            if value is not None:
                raise ValueError(f"{flag}: applies only when sampling (--temperature > 0), found --temperature 0")
    if args.end_think_id is not None and args.thinking_budget is None:
        raise ValueError("--end-think-id: applies with --thinking-budget only, found no --thinking-budget")
    trace = getattr(args, "trace", None)
    if trace is not None and Path(trace).suffix.lower() not in (".html", ".png"):
        raise ValueError(f"--trace: expected a file ending in .html or .png, found {trace!r}")


def load_model(args: argparse.Namespace) -> Any:
    """The model ``--model/--adapter/--no-adapter/--dtype/--device/--compile/--linear`` name."""
    import graphrt

    adapter: Any = False if args.no_adapter else args.adapter
    return graphrt.load(args.model, dtype=args.dtype, device=args.device, max_batch=1, compile=args.compile,
                        adapter=adapter, tp=getattr(args, "tp", 1), tp_check=getattr(args, "tp_check", False),
                        linear=getattr(args, "linear", "auto"))


def decode_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`graphrt.api.prepare` from the decode arguments."""
    mode: Any
    if args.policy is not None:
        from graphrt.frontends.policies.files import load_policy_file

        mode = load_policy_file(args.policy)
    else:
        mode = args.mode or "ar"
    opts: dict[str, Any] = dict(
        mode=mode, opt_level=args.opt_level, max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens,
        temperature=args.temperature, seed=args.seed or 0, top_k=args.top_k or 0,
        top_p=1.0 if args.top_p is None else args.top_p, stop_strings=tuple(args.stop),
        stop_token_ids=tuple(args.stop_id), ignore_eos=args.ignore_eos, logprobs=args.logprobs,
        thinking_budget=args.thinking_budget, end_think_token_id=args.end_think_id)
    if args.policy is None:
        opts.update(block_length=args.block_length, threshold=args.threshold)
    return opts


def prepare_request(model: Any, args: argparse.Namespace, **source: Any) -> tuple[Any, list[int], Any]:
    """Compile the mode or policy file and tokenize ``source`` (``prompt=`` or ``messages=``)."""
    import graphrt
    from graphrt.api import prepare

    opts = decode_options(args)
    if args.policy is not None:  # build it here, so that any error names the file
        try:
            opts["mode"] = graphrt.compile(opts["mode"], model, opts.pop("opt_level"))
        except graphrt.GraphError as e:
            raise ValueError(f"{args.policy}: {e}") from None
        except Exception as e:  # the user's build function may raise anything
            raise ValueError(f"{args.policy}: building the policy raised {type(e).__name__}: {e}") from e
    return prepare(model, **source, **opts)


def read_messages(path: str) -> list[dict[str, str]]:
    """The conversation in ``path`` (a JSON list of ``{role, content}``, or ``{"messages": [...]}``)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"--messages: expected a JSON file, found nothing at {p}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--messages: {p}: expected JSON, found invalid JSON ({e})") from None
    if isinstance(data, dict):
        data = data.get("messages")
    from graphrt.frontends.models.tokenizer import check_messages

    check_messages(data, f"--messages {p}")
    return data


class TextStream:
    """Prints a request's text as its tokens arrive.

    It holds back an incomplete UTF-8 character, and with stop strings the last
    ``len(longest stop) - 1`` characters, so what it prints is always a prefix of
    the result's text (which is cut before the first stop string).
    """

    def __init__(self, tokenizer: Any, stops: tuple[str, ...] = (), out: Any = None) -> None:
        self.tokenizer, self.out = tokenizer, out or sys.stdout
        self.stops = stops
        self.holdback = max((len(s) for s in stops), default=1) - 1
        self.tokens: list[int] = []
        self.printed = 0

    def __call__(self, new: list[int]) -> None:
        """Add ``new`` tokens and print the text they complete."""
        self.tokens += new
        text = self.tokenizer.decode(self.tokens, skip_special=True) if self.tokenizer else \
            " ".join(map(str, self.tokens)) + " "
        if text.endswith("\ufffd"):
            return
        end = len(text) - self.holdback
        hits = [text.find(s) for s in self.stops if s in text]
        end = min([end] + hits)
        if end > self.printed:
            self.out.write(text[self.printed:end])
            self.out.flush()
            self.printed = end


def decode_and_report(model: Any, args: argparse.Namespace, compiled: Any, ids: list[int], params: Any,
                      header: str = "", record_extra: dict[str, Any] | None = None,
                      on_text: Callable[[str], None] | None = None) -> Any:
    """Decode (streamed unless ``--json -`` or ``--no-stream``), print stats, write ``--json`` and ``--trace``."""
    from graphrt.frontends.cli.streaming import stream_generate

    quiet = args.json == "-"
    stream = None if quiet or getattr(args, "no_stream", False) else TextStream(model.tokenizer, params.stop_strings)
    if stream is not None and header:
        sys.stdout.write(header)
    trace_path = getattr(args, "trace", None)
    result, trace = stream_generate(model, compiled, ids, params, on_tokens=stream, trace=trace_path is not None)
    if stream is not None:
        rest = (result.text or "")[stream.printed:] if model.tokenizer else ""
        sys.stdout.write(rest + "\n")
    elif not quiet:
        text = result.text if result.text is not None else " ".join(map(str, result.tokens))
        sys.stdout.write(header + text + "\n")
    lp = [x for x in (result.logprobs or [])]
    extra = f", mean logprob {sum(lp) / len(lp):.3f}" if lp else ""
    print(f"[{result.mode}] {len(result.tokens)} tokens, {result.forwards} forwards, TPF {result.tpf:.2f}, "
          f"{result.seconds:.2f} s ({result.finish_reason}{extra})", file=sys.stderr)
    if trace is not None:
        from graphrt.frontends.cli.trace import draw_trace

        draw_trace(trace, trace_path)
        print(f"trace: {trace_path} ({len(trace.forwards)} forwards, {len(trace.rejected_drafts())} rejected drafts)",
              file=sys.stderr)
    record = result.to_record()
    if result.cycle_info:  # an adaptive policy: its choices, summarised per draft source
        from graphrt.frontends.policies.auto import summarize_cycles

        record["auto"] = summarize_cycles(result.cycle_info)
        mix = ", ".join(f"{s} {d['cycles']} cycles (accepted {d['acceptance_rate']:.0%})"
                        for s, d in record["auto"]["sources"].items())
        print(f"[{result.mode}] {mix}", file=sys.stderr)
    if getattr(args, "vs_ar", False) and result.mode != "ar":
        record["vs_ar"] = compare_with_ar(model, ids, params, result)
    record.update(record_extra or {})
    record["model"] = model.path
    record["adapter"] = model.adapter
    from graphrt.frontends.cli.output import write_json

    write_json(args.json, record)
    return result


def compare_with_ar(model: Any, ids: list[int], params: Any, result: Any) -> dict[str, Any]:
    """Decode the same request with ``ar``, print both speeds (tokens per second, prefill included) and
    whether the outputs agree; return them as a record."""
    import graphrt
    from graphrt.frontends.cli.streaming import stream_generate

    ar, _ = stream_generate(model, graphrt.compile("ar", model), ids, params)

    def rate(r: Any) -> float:
        return len(r.tokens) / max(r.seconds, 1e-9)

    same = ar.tokens == result.tokens
    print(f"[vs ar] {result.mode} {rate(result):.1f} tok/s (TPF {result.tpf:.2f}), ar {rate(ar):.1f} tok/s "
          f"(TPF {ar.tpf:.2f}): {rate(result) / rate(ar):.2f}x; output {'identical to' if same else 'differs from'} "
          f"ar's", file=sys.stderr)
    return {"tok_per_s": round(rate(result), 2), "ar_tok_per_s": round(rate(ar), 2), "ar_tpf": round(ar.tpf, 4),
            "speedup": round(rate(result) / rate(ar), 3), "identical_to_ar": same}


def run(args: argparse.Namespace) -> int:
    """Execute ``graphrt generate``."""
    check_knobs(args)
    if args.prompt is not None and not args.prompt:
        raise ValueError("--prompt: expected non-empty text, found an empty prompt")
    messages = read_messages(args.messages) if args.messages is not None else None
    model = load_model(args)
    source = {"prompt": args.prompt} if messages is None else {"messages": messages}
    compiled, ids, params = prepare_request(model, args, **source)

    def decode(a: argparse.Namespace) -> Any:
        return decode_and_report(model, a, compiled, ids, params, header=args.prompt or "",
                                 record_extra={"prompt": args.prompt, "messages": messages})

    if args.tp == 1:
        decode(args)
    else:
        from graphrt.frontends.models.tensor_parallel import decode_on_every_rank

        decode_on_every_rank(model, args, decode)
    return 0
