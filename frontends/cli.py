"""The ``graphrt`` command line: ``generate``, ``chat``, ``show``, ``bench``, ``serve``, ``train``, ``eval``.

Each subcommand lives in its own module (listed in :data:`SUBCOMMANDS`), which
exposes ``add_parser(subparsers) -> None`` registering its arguments and a
``func(args) -> int`` default. A ``--json FILE`` that cannot be written is
refused here, before the command does any work; :func:`write_json` writes it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

# One module per subcommand, in --help order.
SUBCOMMANDS = [
    "graphrt.frontends.cli_generate",
    "graphrt.frontends.cli_chat",
    "graphrt.frontends.cli_show",
    "graphrt.frontends.cli_bench",
    "graphrt.frontends.cli_serve",
    "graphrt.frontends.training.train",
    "graphrt.frontends.training.evaluate",
]

EPILOG = """examples:
  graphrt generate --mode self-spec --prompt "def parse_args("
  graphrt chat --model path/to/checkpoint --mode self-spec
  graphrt show --mode self-spec --opt 1 --out self_spec.svg
  graphrt eval --json results.json
run 'graphrt COMMAND --help' for a command's options and examples."""


def build_parser() -> argparse.ArgumentParser:
    """The top-level argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="graphrt", description=__doc__.splitlines()[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def check_json_path(path: str | None) -> None:
    """Raise ``ValueError`` unless ``path`` (``--json``) is ``None``, ``-`` or a file that can be written."""
    if path is None or path == "-":
        return
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise ValueError(f"--json: expected a file path (or '-'), found a directory at {p}")
    if not parent.is_dir():
        raise ValueError(f"--json: expected an existing directory for {p}, found no directory {parent}")
    if not os.access(p if p.exists() else parent, os.W_OK):
        raise ValueError(f"--json: expected a writable path, found {p} not writable")


def write_json(path: str | None, record: Any) -> None:
    """Write ``record`` as JSON to ``path`` (``-``: standard output; ``None``: nowhere)."""
    if path is None:
        return
    text = json.dumps(record, indent=2) + "\n"
    if path == "-":
        sys.stdout.write(text)
    else:
        Path(path).write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``graphrt`` console script."""
    args = build_parser().parse_args(argv)
    try:
        check_json_path(getattr(args, "json", None))
        return int(args.func(args) or 0)
    except ValueError as exc:
        print(f"graphrt {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
