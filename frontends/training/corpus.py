"""The training corpus: the running interpreter's own standard library source.

Files are the ``.py`` files under ``sysconfig.get_paths()["stdlib"]`` in
sorted relative-path order, excluding ``site-packages``, the build-specific
``_sysconfigdata_*`` module and files that are not valid UTF-8. The split into
train and held-out is by file and fixed (see :data:`SPLIT_RULE`):

* files inside a test suite (a path component named ``test``, ``tests`` or
  ``idle_test``) always go to training;
* every other file goes to held-out when
  ``int(sha256(relative_path)[:8], 16) % 20 == 0``, else to training.

:func:`corpus_info` records the Python version, the rule and a sha256 over
``relative_path + NUL + bytes + NUL`` of every file in order, so a checkpoint
says exactly which text it was trained on.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

HELDOUT_MODULUS = 20
TEST_DIR_NAMES = frozenset({"test", "tests", "idle_test"})
SPLIT_RULE = (
    "held-out iff no path component is in {test, tests, idle_test} and "
    f"int(sha256(relative_path).hexdigest()[:8], 16) % {HELDOUT_MODULUS} == 0"
)


@dataclass(frozen=True)
class SourceFile:
    """One corpus file.

    Attributes
    ----------
    path : str
        Path relative to the stdlib root, with ``/`` separators.
    text : str
        The file's text (decoded as UTF-8, newlines untouched).
    split : str
        ``"train"`` or ``"heldout"``.
    """

    path: str
    text: str
    split: str


def stdlib_root() -> Path:
    """The running interpreter's standard library directory (``Lib/``).

    Returns
    -------
    Path
        ``sysconfig.get_paths()["stdlib"]``.
    """
    return Path(sysconfig.get_paths()["stdlib"])


def is_test_file(rel_path: str) -> bool:
    """Whether a file belongs to a standard-library test suite.

    Parameters
    ----------
    rel_path : str
        Path relative to the stdlib root, ``/``-separated.

    Returns
    -------
    bool
        True when a directory component is ``test``, ``tests`` or ``idle_test``.
    """
    return any(part in TEST_DIR_NAMES for part in rel_path.split("/")[:-1])


def split_of(rel_path: str) -> str:
    """The fixed split of a file (see :data:`SPLIT_RULE`).

    Parameters
    ----------
    rel_path : str
        As in :func:`is_test_file`.

    Returns
    -------
    str
        ``"train"`` or ``"heldout"``.
    """
    if is_test_file(rel_path):
        return "train"
    digest = hashlib.sha256(rel_path.encode("utf-8")).hexdigest()
    return "heldout" if int(digest[:8], 16) % HELDOUT_MODULUS == 0 else "train"


def _included(rel: Path) -> bool:
    if "site-packages" in rel.parts or "__pycache__" in rel.parts:
        return False
    return not rel.name.startswith("_sysconfigdata_")


def load_corpus(root: Path | None = None) -> list[SourceFile]:
    """Every corpus file, in sorted relative-path order.

    Parameters
    ----------
    root : Path, optional
        Directory to read; defaults to :func:`stdlib_root`.

    Returns
    -------
    list[SourceFile]
        Files that decode as UTF-8 (the few deliberately mis-encoded test
        files are skipped).

    Raises
    ------
    ValueError
        If the directory holds no ``.py`` file.
    """
    root = Path(root) if root is not None else stdlib_root()
    files: list[SourceFile] = []
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root)
        if not _included(rel) or not path.is_file():
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue
        rel_s = rel.as_posix()
        files.append(SourceFile(rel_s, text, split_of(rel_s)))
    if not files:
        raise ValueError(f"corpus: expected .py files under {root}, found none")
    return files


def corpus_sha256(files: list[SourceFile]) -> str:
    """The sha256 of a corpus (paths and contents, in order).

    Parameters
    ----------
    files : list[SourceFile]
        As returned by :func:`load_corpus`.

    Returns
    -------
    str
        Hex digest over ``path + NUL + utf8(text) + NUL`` for every file.
    """
    h = hashlib.sha256()
    for f in files:
        h.update(f.path.encode("utf-8") + b"\0" + f.text.encode("utf-8") + b"\0")
    return h.hexdigest()


def split_texts(files: list[SourceFile], split: str) -> list[SourceFile]:
    """The files of one split.

    Parameters
    ----------
    files : list[SourceFile]
        The corpus.
    split : str
        ``"train"`` or ``"heldout"``.

    Returns
    -------
    list[SourceFile]
        The files of that split, in corpus order.

    Raises
    ------
    ValueError
        If ``split`` is not ``"train"`` or ``"heldout"``.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split_texts: expected split 'train' or 'heldout', found {split!r}")
    return [f for f in files if f.split == split]


def corpus_info(files: list[SourceFile]) -> dict:
    """A JSON-able record of the corpus, for the training record.

    Parameters
    ----------
    files : list[SourceFile]
        The corpus.

    Returns
    -------
    dict
        Python version, stdlib directory (``lib/pythonX.Y``), split rule, sha256, and per-split file
        and character counts.
    """
    info: dict = {
        "python_version": sys.version.split()[0],
        "python_implementation": sys.implementation.name,
        "stdlib_root": str(Path("lib") / stdlib_root().name),  # the installation's own prefix is not recorded
        "split_rule": SPLIT_RULE,
        "sha256": corpus_sha256(files),
        "n_files": len(files),
    }
    for split in ("train", "heldout"):
        part = split_texts(files, split)
        info[f"{split}_files"] = len(part)
        info[f"{split}_chars"] = sum(len(f.text) for f in part)
    return info
