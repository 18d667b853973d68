"""Before/after table of two ``graphrt eval --json`` runs on the same prompts (one row per mode).

Usage::

    python bench/compare_eval.py BEFORE.json AFTER.json [--out TABLE.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = (("tpf", "TPF", ".2f"), ("exact_match_nonblank", "exact match (non-blank)", "%"),
           ("prefix_match", "prefix match (tokens)", ".2f"), ("ar_loglik", "AR log-lik.", ".3f"),
           ("repetition", "repetition", "%"), ("identical_to_ar", "identical to AR", "%"),
           ("mean_accepted", "mean accepted", ".2f"))


def _fmt(x: Any, fmt: str) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if fmt == "%" else format(x, fmt)


def compare(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> str:
    """Markdown rows ``mode | threshold | figure before -> after ...`` for the modes in both runs.

    Parameters
    ----------
    before, after : list[dict]
        ``graphrt eval`` records.

    Returns
    -------
    str
    """
    key = lambda r: (r["mode"], r["threshold"])  # noqa: E731
    old = {key(r): r for r in before}
    lines = ["| mode | threshold | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for r in after:
        o = old.get(key(r))
        if o is None:
            continue
        cells = [f"{_fmt(o.get(k), f)} -> {_fmt(r.get(k), f)}" for k, _, f in COLUMNS]
        lines.append(f"| {r['mode']} | {r['threshold'] if r['threshold'] is not None else '-'} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print (and with ``--out`` write) the before/after table.

    Parameters
    ----------
    argv : list[str], optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0.
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    table = compare(json.loads(Path(args.before).read_text()), json.loads(Path(args.after).read_text()))
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
