"""``python -m graphrt`` (and ``torchrun ... -m graphrt``): the ``graphrt`` command line."""

from __future__ import annotations

import sys


def main() -> int:
    """Run the ``graphrt`` command line (imported here: the core never imports frontends at module level)."""
    from graphrt.frontends.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
