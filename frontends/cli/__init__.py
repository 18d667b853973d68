"""The command-line room: the ``graphrt`` command and what only it uses.

* :mod:`.main` -- the parser and :func:`main` (the console script); one module per subcommand:
  :mod:`.generate`, :mod:`.chat`, :mod:`.show`, :mod:`.bench`, :mod:`.serve` (``train`` and ``eval``
  live in the training room);
* :mod:`.output` -- ``--json`` records and one-line warnings;
* :mod:`.streaming` and :mod:`.trace` -- a request driven round by round, and its decode trace.

May import: the core, ``graphrt.passes`` and every other room of ``graphrt.frontends`` (it sits on
top of them); nothing imports this room but the console script and ``python -m graphrt``.
"""

from graphrt.frontends.cli.main import main
from graphrt.frontends.cli.output import check_json_path, show_warning, write_json

__all__ = ["check_json_path", "main", "show_warning", "write_json"]
