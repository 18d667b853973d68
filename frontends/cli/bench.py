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

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"  # frontends/cli/bench.py -> <checkout>/bench


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
    p.add_argument("--cost-model", action="store_true",
                   help="print the backbone's cost model (mode auto's: call time by rows, width and keys), calibrating "
                        "it (a few seconds) when none is cached, and exit")
    p.add_argument("--recalibrate", action="store_true", help="with --cost-model: measure again, ignoring the cache")
    try:
        _side_by_side().add_arguments(p)
    except ValueError:  # no source checkout: accept anything, and run() says what is missing
        p.add_argument("rest", nargs=argparse.REMAINDER)


def run(args: argparse.Namespace) -> int:
    """Execute ``graphrt bench``."""
    if getattr(args, "cost_model", False):
        return print_cost_model(args)
    return int(_side_by_side().run(args))


def print_cost_model(args: argparse.Namespace) -> int:
    """``graphrt bench --cost-model``: the cached cost model of ``--model`` (measured now when none is)."""
    import graphrt
    from graphrt.cost_model import cache_path, for_model

    model = graphrt.load(getattr(args, "model", None), dtype=getattr(args, "dtype", None))
    threads = getattr(args, "threads", None)
    if threads:
        import torch

        torch.set_num_threads(threads)
    cm = for_model(model, max_age_s=-1.0 if args.recalibrate else 7 * 24 * 3600.0, log=print)
    print(f"model: {model.path}")
    print(cm.describe())
    for r, w, s, adapter, t in cm.points:
        print(f"  rows {r:3d} width {w:3d} keys {w * s:7d}{' adapter' if adapter else '        '}: measured "
              f"{t * 1e3:8.3f} ms, model {cm.linear(r, w, s, adapter) * 1e3:8.3f} ms")
    print(f"cached at {cache_path(cm.key)}")
    return 0
