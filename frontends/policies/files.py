"""Policies from files: a Python file that defines a :class:`~graphrt.Policy`, or a JSON graph.

- ``my_policy.py``: executed as a module; it must define ``policy`` (or exactly
  one module-level :class:`~graphrt.Policy`).
- ``my_policy.json``: a graph written by :func:`graphrt.graph_to_json` (or by
  ``graphrt show --out FILE.json``, which adds ``"overshoot"``: the positions
  past the token budget the policy may forward; default ``block_size + 1`` of the
  model). A JSON graph is built for one model's special ids and block size.

Every error names the file (and, for a graph that fails verification, the node).
"""

from __future__ import annotations

import json
import os
import runpy
from pathlib import Path
from typing import Any

from graphrt.ir import Graph, GraphError
from graphrt.policy import Policy
from graphrt.serialize import FORMAT_VERSION, graph_from_dict, graph_to_dict
from graphrt.verify import verify


def load_policy_file(path: str | os.PathLike[str]) -> Policy:
    """The :class:`Policy` a ``.py`` or ``.json`` file declares.

    Raises
    ------
    ValueError
        Missing file, another suffix, a Python file that raises or defines no policy,
        malformed JSON, or a graph that does not verify (the message names the
        file and the node).
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--policy: expected a .py or .json file, found nothing at {p}")
    if p.suffix == ".py":
        return _python_policy(p)
    if p.suffix == ".json":
        return _json_policy(p)
    raise ValueError(f"--policy: expected a file ending in .py or .json, found {p.name!r}")


def _python_policy(p: Path) -> Policy:
    try:
        namespace = runpy.run_path(str(p), run_name=f"graphrt_policy_{p.stem}")
    except Exception as e:  # the user's code may raise anything
        raise ValueError(f"{p}: running the policy file raised {type(e).__name__}: {e}") from e
    if isinstance(namespace.get("policy"), Policy):
        return namespace["policy"]
    found = {k: v for k, v in namespace.items() if isinstance(v, Policy) and not k.startswith("_")}
    if len(found) == 1:
        return next(iter(found.values()))
    raise ValueError(f"{p}: expected a module-level Policy named 'policy' (e.g. policy = Policy('mine', build)), "
                     f"found {'several: ' + ', '.join(sorted(found)) if found else 'none'}")


def _json_policy(p: Path) -> Policy:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: expected a graphrt graph JSON document, found invalid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("graphrt_graph") != FORMAT_VERSION or not isinstance(data.get("graph"),
                                                                                                     dict):
        found = data.get("graphrt_graph") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{p}: expected a graphrt graph document (\"graphrt_graph\": {FORMAT_VERSION}, \"graph\": "
                         f"{{...}}), found {found!r}")
    try:
        graph = verify(graph_from_dict(data["graph"]))
    except GraphError as e:
        raise ValueError(f"{p}: {e}") from None
    except (KeyError, TypeError) as e:
        raise ValueError(f"{p}: malformed graph document ({type(e).__name__}: {e})") from None
    overshoot = data.get("overshoot")
    if overshoot is not None and (not isinstance(overshoot, int) or overshoot < 0):
        raise ValueError(f"{p}: field 'overshoot': expected an int >= 0, found {overshoot!r}")
    name = str(data.get("policy") or graph.name or p.stem)
    return Policy(name, lambda config, g=graph: g, {"file": str(p)},
                  overshoot=lambda c, o=overshoot: o if o is not None else c.block_size + 1)


def policy_document(policy: Policy, graph: Graph, overshoot: int) -> dict[str, Any]:
    """The JSON document :func:`load_policy_file` reads back (``graph`` as built for one model)."""
    return {"graphrt_graph": FORMAT_VERSION, "policy": policy.name, "overshoot": overshoot,
            "graph": graph_to_dict(graph)}


__all__ = ["load_policy_file", "policy_document"]
