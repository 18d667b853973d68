"""``graphrt chat``: talk to a checkpoint through its chat template (interactive, or one shot)."""

from __future__ import annotations

import argparse
import sys

from graphrt.frontends.cli.generate import (add_decode_arguments, add_model_arguments, check_knobs,
                                            decode_and_report, load_model, prepare_request, read_messages)

EXAMPLES = """examples:
  graphrt chat --model DIR                                   # interactive: type a message, empty line or /exit ends
  graphrt chat --model DIR --mode self-spec --system "Be brief."
  graphrt chat --model DIR --messages chat.json --json -     # one shot: reply to the conversation in chat.json
  graphrt chat --model smollm2 --message "What is a hash table?" --mode self-spec --vs-ar   # one shot
  graphrt chat --model DIR --thinking-budget 128             # force </think> after 128 tokens
"""


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``chat``."""
    p = sub.add_parser("chat", help="chat with a model (its chat template)",
                       description="Chat with a model: each turn is rendered by the tokenizer's chat template.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    add_decode_arguments(p)
    one_shot = p.add_mutually_exclusive_group()
    one_shot.add_argument("--messages", default=None, metavar="FILE.json", help="one shot: reply to this conversation")
    one_shot.add_argument("--message", default=None, metavar="TEXT", help="one shot: reply to this user message")
    p.add_argument("--system", default=None, help="a system message opening the conversation")
    p.set_defaults(func=run, max_new_tokens=256)


def run(args: argparse.Namespace) -> int:
    """Execute ``graphrt chat``."""
    check_knobs(args)
    messages = read_messages(args.messages) if args.messages is not None else []
    if args.message is not None:
        if not args.message.strip():
            raise ValueError("--message: expected non-empty text, found an empty message")
        messages.append({"role": "user", "content": args.message})
    if args.system is not None:
        messages.insert(0, {"role": "system", "content": args.system})
    model = load_model(args)
    if model.tokenizer is None or not model.tokenizer.chat_template:
        where = model.path
        raise ValueError(f"chat: the tokenizer of {where} has no chat template (expected 'chat_template' in "
                         f"tokenizer_config.json or a chat_template.jinja file); use graphrt generate --prompt")
    if args.messages is not None or args.message is not None:
        compiled, ids, params = prepare_request(model, args, messages=messages)
        decode_and_report(model, args, compiled, ids, params, record_extra={"messages": messages})
        return 0
    if args.json is not None and args.json == "-":
        raise ValueError("--json -: an interactive chat prints to the terminal; give a file or use --messages")
    records = []
    turn_args = argparse.Namespace(**{**vars(args), "json": None})  # the record is written once, at the end
    while True:
        try:
            line = input("you> ")
        except EOFError:
            break
        if not line.strip() or line.strip() == "/exit":
            break
        messages.append({"role": "user", "content": line})
        compiled, ids, params = prepare_request(model, turn_args, messages=messages)
        sys.stdout.write("model> ")
        result = decode_and_report(model, turn_args, compiled, ids, params)
        messages.append({"role": "assistant", "content": result.text or ""})
        records.append(result.to_record())
    if args.json is not None:
        from graphrt.frontends.cli.output import write_json

        write_json(args.json, {"model": model.path, "messages": messages, "turns": records})
    return 0
