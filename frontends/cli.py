"""The ``graphrt`` command line: ``generate``, ``train``, ``eval``.

Each subcommand lives in its own module, which exposes
``add_parser(subparsers) -> None`` registering its arguments and a
``func(args) -> int`` default.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    """The top-level argument parser with every subcommand registered."""
    from graphrt.frontends import cli_generate

    parser = argparse.ArgumentParser(prog="graphrt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cli_generate.add_parser(sub)
    for name in ("graphrt.frontends.training.train", "graphrt.frontends.training.evaluate"):
        try:
            module = __import__(name, fromlist=["add_parser"])
        except ModuleNotFoundError as exc:  # pragma: no cover - partial installs
            if exc.name != name:
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``graphrt`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        print(f"graphrt {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
