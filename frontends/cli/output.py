"""What every command shares: ``--json`` records and one-line warnings."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["check_json_path", "show_warning", "write_json"]


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


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                 line: str | None = None) -> None:
    """Print a warning as one line, ``graphrt: warning: MESSAGE`` (no ``file:line: UserWarning``, no source echo).

    A category other than ``UserWarning`` is named at the end: ``... [FutureWarning]``.
    """
    text = " ".join(str(message).split("\n"))
    tag = "" if category is UserWarning else f" [{category.__name__}]"
    print(f"graphrt: warning: {text}{tag}", file=file if file is not None else sys.stderr)


def pyplot(what: str) -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend, for ``what`` (a file being drawn).

    Raises
    ------
    ValueError
        matplotlib is not installed (it is the optional ``plot`` extra: ``pip install 'graphrt[plot]'``).
    """
    try:
        import matplotlib
    except ImportError:
        raise ValueError(f"{what}: expected matplotlib to draw it, found it not installed "
                         f"(pip install 'graphrt[plot]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
