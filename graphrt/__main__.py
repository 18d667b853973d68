"""``python -m graphrt`` (and ``torchrun ... -m graphrt``): the ``graphrt`` command line.

The command is the ``graphrt`` console script that ``pyproject.toml`` declares
(``graphrt.frontends.cli:main``); this runs that entry point, so the core names
no frontend.
"""

from __future__ import annotations

import sys


def main() -> int:
    """Run the installed ``graphrt`` console script.

    Raises
    ------
    RuntimeError
        No ``graphrt`` console script is installed (install graphrt with ``pip install -e .``).
    """
    from importlib.metadata import entry_points

    scripts = list(entry_points(group="console_scripts", name="graphrt"))
    if not scripts:
        raise RuntimeError("python -m graphrt: expected the 'graphrt' console script installed with graphrt, "
                           "found none (pip install -e .)")
    return int(scripts[0].load()() or 0)


if __name__ == "__main__":
    sys.exit(main())
