"""``graphrt bench``: the side-by-side decode benchmark (``bench/side_by_side.py``).

The benchmark lives in the source tree's ``bench/`` folder (it compares graphrt with
transformers and hand-written loops, and is not part of the installed runtime), so
this command needs a source checkout installed with ``pip install -e``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"


def _side_by_side() -> ModuleType:
    """``bench/side_by_side.py`` imported from the source checkout."""
    if not (BENCH_DIR / "side_by_side.py").is_file():
        raise ValueError(f"bench: expected the benchmark at {BENCH_DIR / 'side_by_side.py'} (a source checkout "
                         f"installed with pip install -e), found no such file")
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    return importlib.import_module("side_by_side")


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``bench``."""
    p = sub.add_parser("bench", help="side-by-side decode benchmark",
                       description="Every mode of graphrt side by side with transformers and hand-written loops.")
    p.set_defaults(func=run)
    try:
        _side_by_side().add_arguments(p)
    except ValueError:  # no source checkout: accept anything, and run() says what is missing
        p.add_argument("rest", nargs=argparse.REMAINDER)


def run(args: argparse.Namespace) -> int:
    """Execute ``graphrt bench``."""
    return int(_side_by_side().run(args))
