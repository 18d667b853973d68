"""The default pipeline: the straight list of semantics-preserving passes.

``O0`` runs the graph as built. ``O1`` (the default) is the list below; each
entry says why the pass is there. ``O2`` is ``O1`` for now (policy
transformations such as forward merging are opt-in, never part of a level).
"""

from __future__ import annotations

import os
from typing import Mapping

from graphrt.passes.canonicalize import canonicalize
from graphrt.passes.capture_planning import plan_capture
from graphrt.passes.constant_folding import fold_constants
from graphrt.passes.cse import eliminate_common_subexpressions
from graphrt.passes.dead_code import eliminate_dead_code, remove_dead_carried
from graphrt.passes.fusion import fuse
from graphrt.passes.hoist_invariants import hoist_invariants
from graphrt.passes.manager import PassStep, Pipeline
from graphrt.passes.memory_planning import plan_memory
from graphrt.passes.stream_assignment import assign_streams

OPT_LEVELS = (0, 1, 2)


def default_steps(dims: Mapping[str, int] | None = None) -> list[PassStep]:
    """The ``O1`` passes, in order, each with the reason it is there.

    Parameters
    ----------
    dims:
        Model dims (``{"V": vocab}``) for the memory planner's byte report.
    """
    return [
        PassStep("canonicalize", canonicalize,
                 "one spelling per computation (constants right, identities gone) so later patterns match once"),
        PassStep("fold_constants", fold_constants,
                 "evaluate constant and static-shape arithmetic now rather than every step"),
        PassStep("hoist_invariants", hoist_invariants,
                 "per-iteration constants and temperature arithmetic run once, before the loop"),
        PassStep("cse", eliminate_common_subexpressions,
                 "one clean(logits) per token instead of three; merges what hoisting lined up"),
        PassStep("fuse", fuse,
                 "primitive chains -> sample / confidence / denoise_select / verify_accept (the kernels)"),
        PassStep("remove_dead_carried", remove_dead_carried,
                 "drop loop-carried values that influence nothing (e.g. a step counter without a schedule)"),
        PassStep("dce", eliminate_dead_code,
                 "remove what fusion orphaned (the T = 0 noise, the chains' intermediates), effects kept"),
        PassStep("plan_memory", (lambda g: plan_memory(g, dims=dims)) if dims else plan_memory,
                 "static buffers reused across steps: a steady-state step allocates no planned tensor"),
        PassStep("assign_streams", assign_streams,
                 "independent work (log-probs, next positions) on side streams; events only where needed"),
        PassStep("plan_capture", plan_capture,
                 "static segments between host syncs, for CUDA graphs; counts the syncs that remain"),
    ]


def default_pipeline(opt_level: int = 1, *, verify_each: bool = True, dump_dir: str | os.PathLike[str] | None = None,
                     dims: Mapping[str, int] | None = None) -> Pipeline:
    """The pipeline of an optimisation level.

    Parameters
    ----------
    opt_level:
        0 (the graph as built: no passes), 1 (default pipeline) or 2 (same as 1).
    verify_each:
        Verify after every pass (the default; tests rely on it).
    dump_dir:
        Dump the graph after every pass (text and DOT) into this directory
        (``$GRAPHRT_DUMP_PASSES`` when not given).
    dims:
        Sizes of model dimensions for the memory planner's byte report (e.g.
        ``{"V": 96}``); buffers are planned whether or not it is given.

    Returns
    -------
    Pipeline
        Ready to :meth:`~graphrt.passes.manager.Pipeline.run`.

    Raises
    ------
    ValueError
        An unknown level.
    """
    if opt_level not in OPT_LEVELS:
        raise ValueError(f"default_pipeline: opt_level expected one of {OPT_LEVELS}, found {opt_level!r}")
    steps = [] if opt_level == 0 else default_steps(dims)
    return Pipeline(steps, name=f"O{opt_level}", verify_each=verify_each, dump_dir=dump_dir)
