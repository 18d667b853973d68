"""The ``graphrt`` command line: ``generate``, ``chat``, ``show``, ``bench``, ``serve``, ``train``, ``eval``.

Each subcommand lives in its own module (listed in :data:`SUBCOMMANDS`), which
exposes ``add_parser(subparsers) -> None`` registering its arguments and a
``func(args) -> int`` default. A ``--json FILE`` that cannot be written is
refused here, before the command does any work; :func:`~graphrt.frontends.cli.output.write_json`
writes it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from graphrt.frontends.cli.output import check_json_path, show_warning

# One module per subcommand, in --help order.
SUBCOMMANDS = [
    "graphrt.frontends.cli.generate",
    "graphrt.frontends.cli.chat",
    "graphrt.frontends.cli.show",
    "graphrt.frontends.cli.bench",
    "graphrt.frontends.cli.serve",
    "graphrt.frontends.training.command",
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``graphrt`` console script (warnings print as :func:`show_warning` lines while it runs)."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():  # restores the caller's warning display on return
        warnings.showwarning = show_warning
        try:
            check_json_path(getattr(args, "json", None))
            return int(args.func(args) or 0)
        except ValueError as exc:
            print(f"graphrt {args.command}: error: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
