"""``python -m graphrt`` (and ``torchrun ... -m graphrt``): the ``graphrt`` command line."""

from __future__ import annotations

import importlib
import sys


def main() -> int:
    """Run the ``graphrt`` command line (reached through importlib: the core never imports frontends)."""
    return importlib.import_module("graphrt.frontends.cli").main()


if __name__ == "__main__":
    sys.exit(main())
