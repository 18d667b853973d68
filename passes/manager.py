"""The pass manager: a straight, named pipeline that verifies after every pass.

A pass is a pure function ``Graph -> PassResult(graph, changed)``: it never
modifies its input. A :class:`Pipeline` is a list of :class:`PassStep` (name,
function, one line on why it is there); :meth:`Pipeline.run` runs them in
order, verifies the graph after each one (a :class:`PassError` names the pass
that broke it), times each pass, logs what changed (node counts per op) and,
when asked, dumps the graph after every pass as text and DOT.

>>> from graphrt.passes import default_pipeline
>>> # result = default_pipeline(1).run(graph); result.graph, result.report
"""

from __future__ import annotations

import gc
import inspect
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from graphrt.analysis import summary
from graphrt.ir import Graph, GraphError
from graphrt.passes.graph_utils import copy_graph
from graphrt.printer import format_graph, to_dot
from graphrt.verify import verify

DUMP_ENV = "GRAPHRT_DUMP_PASSES"
"""Environment variable: a directory to dump the graph after every pass into (used when no dump_dir is given)."""


@dataclass(frozen=True)
class PassResult:
    """What a pass returns.

    Attributes
    ----------
    graph:
        The rewritten graph (the input object itself when nothing changed).
    changed:
        Whether the pass changed the graph's nodes or its annotations.
    info:
        Pass-specific details for the change log (e.g. ``{"sample": 3}`` fused).
    """

    graph: Graph
    changed: bool
    info: dict[str, Any] = field(default_factory=dict)


Pass = Callable[[Graph], PassResult]

_PASS_DOC = """Parameters
----------
graph:
    A verified graph; not modified.

Returns
-------
PassResult
    A rewritten copy, or ``graph`` itself when nothing changed; {info}.
"""


def rewrite_pass(info: str) -> Callable[[Callable[[Graph], dict[str, Any]]], Pass]:
    """Make a pass from a rewrite that works in place: the copy in, the :class:`PassResult` out.

    The decorated ``rewrite(graph) -> change log`` rewrites the copy it is given
    and returns what it changed (empty: nothing); the pass copies its input,
    runs the rewrite and returns the copy, or its unchanged input. The pass's
    docstring is the rewrite's, followed by the sections every pass shares.

    Parameters
    ----------
    info:
        What the change log holds, for the docstring (``"``info`` counts ..."``).

    Returns
    -------
    Callable
        A decorator: ``rewrite -> pass``.

    Examples
    --------
    >>> @rewrite_pass("``info`` is empty")
    ... def no_op(graph: Graph) -> dict[str, Any]:
    ...     \"\"\"Change nothing.\"\"\"
    ...     return {}
    """
    def decorate(rewrite: Callable[[Graph], dict[str, Any]]) -> Pass:
        def run(graph: Graph) -> PassResult:
            out = copy_graph(graph)
            log = rewrite(out)
            return PassResult(out, True, log) if log else PassResult(graph, False, {})

        run.__name__, run.__qualname__, run.__module__ = rewrite.__name__, rewrite.__qualname__, rewrite.__module__
        run.__doc__ = f"{inspect.cleandoc(rewrite.__doc__ or '')}\n\n{_PASS_DOC.format(info=info)}"
        return run

    return decorate


@dataclass(frozen=True)
class PassStep:
    """One entry of a pipeline: a named pass and why it is there."""

    name: str
    fn: Pass
    reason: str


@dataclass
class PipelineResult:
    """The outcome of :meth:`Pipeline.run`.

    Attributes
    ----------
    graph:
        The optimised graph (annotated with the analyses' results).
    report:
        One dict per pass: ``pass``, ``reason``, ``changed``, ``seconds`` (the
        pass), ``verify_seconds`` (the check after it), ``nodes_before``,
        ``nodes_after``, ``ops_removed``, ``ops_added``, ``info``.
    """

    graph: Graph
    report: list[dict[str, Any]]

    @property
    def changed(self) -> bool:
        """Whether any pass changed the graph."""
        return any(r["changed"] for r in self.report)

    @property
    def seconds(self) -> float:
        """Total time of all passes and the verifications after them."""
        return sum(r["seconds"] + r["verify_seconds"] for r in self.report)

    def format_report(self, timings: bool = True) -> str:
        """The report as an aligned text table.

        Parameters
        ----------
        timings:
            Include per-pass times (``False`` for golden files).

        Returns
        -------
        str
        """
        lines = []
        for r in self.report:
            delta = _format_delta(r["ops_removed"], r["ops_added"])
            t = f"{r['seconds'] * 1e3:8.2f} ms  " if timings else ""
            mark = "changed" if r["changed"] else "-"
            info = f"  {r['info']}" if r["info"] else ""
            lines.append(f"{r['pass']:<22} {mark:<8} {t}{r['nodes_before']:>5} -> {r['nodes_after']:<5} {delta}{info}")
        return "\n".join(lines)


class PassError(GraphError):
    """A pass failed or produced a graph that does not verify; the message names the pass."""


class Pipeline:
    """A straight list of named passes (the pass manager).

    Parameters
    ----------
    steps:
        The passes, in order.
    name:
        Shown in errors and dumps (e.g. ``"O1"``).
    verify_each:
        Run :func:`graphrt.verify.verify` after every pass (default True).
    dump_dir:
        If given (or if ``$GRAPHRT_DUMP_PASSES`` is set), write ``NN_<pass>.txt``
        and ``NN_<pass>.dot`` after every pass (``00_input`` first).
    """

    def __init__(self, steps: Sequence[PassStep], name: str = "pipeline", verify_each: bool = True,
                 dump_dir: str | os.PathLike[str] | None = None) -> None:
        names = [s.name for s in steps]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"pipeline '{name}': pass names must be unique, found {dup} more than once")
        self.steps = list(steps)
        self.name = name
        self.verify_each = verify_each
        self.dump_dir = dump_dir if dump_dir is not None else os.environ.get(DUMP_ENV) or None

    def __repr__(self) -> str:
        return f"Pipeline({self.name}: {' -> '.join(s.name for s in self.steps) or 'empty'})"

    def describe(self) -> str:
        """One line per pass: ``name: reason``."""
        return "\n".join(f"{i + 1:2d}. {s.name}: {s.reason}" for i, s in enumerate(self.steps))

    def run(self, graph: Graph) -> PipelineResult:
        """Run every pass in order on ``graph`` (which is left unmodified).

        Python's cyclic garbage collector is paused while the pipeline runs (graphs
        are webs of small cyclic objects; collections mid-pipeline made compile
        time superlinear).

        Parameters
        ----------
        graph:
            A verified graph.

        Returns
        -------
        PipelineResult
            The optimised graph and the per-pass report.

        Raises
        ------
        PassError
            A pass raised, returned something other than a :class:`PassResult`,
            or returned a graph that does not verify; the message names the pass
            and its position in the pipeline.
        """
        paused = gc.isenabled()
        gc.disable()  # graphs are webs of small cyclic objects: collections mid-pipeline cost O(heap) each
        try:
            return self._run(graph)
        finally:
            if paused:
                gc.enable()

    def _run(self, graph: Graph) -> PipelineResult:
        dump = Path(self.dump_dir) if self.dump_dir else None
        if dump is not None:
            dump.mkdir(parents=True, exist_ok=True)
            _dump(dump, 0, "input", graph)
        report: list[dict[str, Any]] = []
        before_ops = summary(graph)["ops"]
        for i, step in enumerate(self.steps):
            where = f"pipeline '{self.name}', pass {i + 1}/{len(self.steps)} '{step.name}'"
            t0 = time.perf_counter()
            try:
                result = step.fn(graph)
            except GraphError as exc:
                raise PassError(f"{where} failed: {exc}") from exc
            if not isinstance(result, PassResult):
                raise PassError(f"{where}: expected a PassResult, found {type(result).__name__}")
            seconds = time.perf_counter() - t0
            if self.verify_each:
                try:
                    verify(result.graph)
                except GraphError as exc:
                    raise PassError(f"{where} produced an invalid graph: {exc}") from exc
            verify_seconds = time.perf_counter() - t0 - seconds
            after_ops = summary(result.graph)["ops"]
            removed = {op: n - after_ops.get(op, 0) for op, n in before_ops.items() if n > after_ops.get(op, 0)}
            added = {op: n - before_ops.get(op, 0) for op, n in after_ops.items() if n > before_ops.get(op, 0)}
            report.append({"pass": step.name, "reason": step.reason, "changed": bool(result.changed),
                           "seconds": seconds, "verify_seconds": verify_seconds,
                           "nodes_before": sum(before_ops.values()),
                           "nodes_after": sum(after_ops.values()), "ops_removed": removed, "ops_added": added,
                           "info": dict(result.info)})
            graph, before_ops = result.graph, after_ops
            if dump is not None:
                _dump(dump, i + 1, step.name, graph)
        return PipelineResult(graph, report)


PassManager = Pipeline
"""Alias: the pass manager is the pipeline that runs."""


def _dump(directory: Path, index: int, name: str, graph: Graph) -> None:
    stem = directory / f"{index:02d}_{name}"
    stem.with_suffix(".txt").write_text(format_graph(graph) + "\n")
    stem.with_suffix(".dot").write_text(to_dot(graph) + "\n")


def _format_delta(removed: dict[str, int], added: dict[str, int]) -> str:
    parts = [f"-{n} {op}" for op, n in sorted(removed.items())] + [f"+{n} {op}" for op, n in sorted(added.items())]
    return ", ".join(parts)
