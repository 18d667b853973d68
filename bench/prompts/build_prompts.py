"""Writes the benchmark's prompt sets (``chat.jsonl``, ``code_edit.jsonl``, ``continuation.jsonl``).

Three kinds of prompt, eight each:

* ``chat`` -- short factual and how-to questions, as ChatML chat messages (written
  for the benchmark, no source file);
* ``code_edit`` -- a request to rewrite or annotate a given function, whose source is
  in the message, so a good answer copies much of the prompt;
* ``continuation`` -- the first 40 lines of a file, to be continued as raw text.

Code comes only from Python standard-library files that graphrt's training corpus
holds out (:func:`graphrt.frontends.training.corpus.split_of` gives ``"heldout"``):
drafters are trained on the ``"train"`` split, so no prompt was seen in training.
Each record names its source file (relative to the standard library), the line
range and the Python version it was read from. The JSONL files are committed; this
script documents where they came from and rewrites them::

    python bench/prompts/build_prompts.py            # rewrite the three files
    python bench/prompts/build_prompts.py --check    # verify the committed files match

Record fields: ``id``, ``kind``, and either ``messages`` (chat, code_edit; a list of
``{"role", "content"}``) or ``text`` (continuation); code records add ``source``,
``lines`` (first and last, 1-based, inclusive), ``function`` (code_edit) and ``python``.
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import sys
from pathlib import Path
from typing import Any

from graphrt.frontends.training.corpus import split_of, stdlib_root

HERE = Path(__file__).resolve().parent
KINDS = ("chat", "code_edit", "continuation")
CONTINUATION_LINES = 40

CHAT_QUESTIONS = (
    "What is the capital of Australia?",
    "How do I reverse a list in Python?",
    "Explain in two sentences what a hash table is.",
    "How many bones are in the adult human body?",
    "What is the difference between a process and a thread?",
    "Give me three tips for writing a clear commit message.",
    "How do I boil an egg so that the yolk stays soft?",
    "Why is the sky blue?",
)

# (source file, function name, request); the function's source follows the request.
CODE_EDITS = (
    ("getopt.py", "long_has_args", "Add type hints and a numpy-style docstring to this function. "
                                   "Return the whole function."),
    ("secrets.py", "token_urlsafe", "Rewrite this function so that it raises ValueError when nbytes is "
                                    "negative. Return the whole function."),
    ("html/__init__.py", "escape", "Add a comment above each statement of this function explaining what it "
                                   "does. Return the whole function."),
    ("types.py", "resolve_bases", "Rename the local variables of this function to more descriptive names, "
                                  "keeping its behaviour. Return the whole function."),
    ("platform.py", "_norm_version", "Rewrite this function using f-strings where it builds strings, and add "
                                     "type hints. Return the whole function."),
    ("multiprocessing/util.py", "get_temp_dir", "Add a docstring and a comment on each line of this function. "
                                                "Return the whole function."),
    ("unittest/result.py", "_exc_info_to_string", "Add type hints to this method and a docstring that "
                                                  "describes its arguments. Return the whole method."),
    ("idlelib/searchengine.py", "search_reverse", "Refactor this function to use early returns instead of "
                                                  "nested conditions. Return the whole function."),
)

CONTINUATIONS = (
    "getopt.py", "py_compile.py", "asynchat.py", "types.py", "html/__init__.py", "multiprocessing/util.py",
    "unittest/result.py", "idlelib/searchengine.py",
)


def heldout_source(rel_path: str) -> str:
    """The text of standard-library file ``rel_path``, which must be in the held-out split.

    Parameters
    ----------
    rel_path : str
        Path relative to the standard library root, ``/``-separated.

    Returns
    -------
    str
        The file's text.

    Raises
    ------
    ValueError
        The file is in the training split (drafters are trained on it).
    """
    split = split_of(rel_path)
    if split != "heldout":
        raise ValueError(f"build_prompts: expected a held-out standard-library file, found {rel_path!r} in "
                         f"split {split!r}")
    return (stdlib_root() / rel_path).read_text(encoding="utf-8")


def function_source(rel_path: str, name: str) -> tuple[str, int, int]:
    """The source of the first function called ``name`` in ``rel_path``, with its first and last line.

    Raises
    ------
    ValueError
        No function of that name in the file.
    """
    text = heldout_source(rel_path)
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            lines = text.splitlines()[first - 1:node.end_lineno]
            indent = min(len(s) - len(s.lstrip()) for s in lines if s.strip())
            return "\n".join(s[indent:] for s in lines), first, int(node.end_lineno)
    raise ValueError(f"build_prompts: expected a function {name!r} in {rel_path}, found none")


def build() -> dict[str, list[dict[str, Any]]]:
    """The three prompt sets, by kind."""
    python = platform.python_version()
    chat = [{"id": f"chat-{i}", "kind": "chat", "messages": [{"role": "user", "content": q}]}
            for i, q in enumerate(CHAT_QUESTIONS)]
    edits = []
    for i, (rel, name, request) in enumerate(CODE_EDITS):
        src, first, last = function_source(rel, name)
        edits.append({"id": f"code_edit-{i}", "kind": "code_edit",
                      "messages": [{"role": "user", "content": f"{request}\n\n```python\n{src}\n```"}],
                      "source": rel, "function": name, "lines": [first, last], "python": python})
    conts = []
    for i, rel in enumerate(CONTINUATIONS):
        lines = heldout_source(rel).splitlines(keepends=True)[:CONTINUATION_LINES]
        conts.append({"id": f"continuation-{i}", "kind": "continuation", "text": "".join(lines), "source": rel,
                      "lines": [1, len(lines)], "python": python})
    return {"chat": chat, "code_edit": edits, "continuation": conts}


def encode(records: list[dict[str, Any]]) -> str:
    """JSONL text: one record per line."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def main(argv: list[str] | None = None) -> int:
    """Write the prompt files (or, with ``--check``, compare them); returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare the committed files instead of writing")
    ap.add_argument("--out", default=str(HERE), help="folder of the JSONL files")
    args = ap.parse_args(argv)
    stale = []
    for kind, records in build().items():
        path = Path(args.out) / f"{kind}.jsonl"
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != encode(records):
                stale.append(str(path))
        else:
            path.write_text(encode(records), encoding="utf-8")
            print(f"wrote {path} ({len(records)} prompts)")
    if stale:
        print(f"build_prompts: expected the committed prompt files to match this Python's standard library, "
              f"found differences in {stale}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
