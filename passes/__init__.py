"""graphrt.passes: the pass infrastructure and the semantics-preserving passes.

``default_pipeline(opt_level).run(graph)`` returns a
:class:`~graphrt.passes.manager.PipelineResult` with ``.graph`` (optimised,
annotated with the memory plan, stream schedule and capture plan under
``graph.annotations``) and ``.report`` (per pass: changed, time, change log).
See ``docs/compiler.md``.
"""

from graphrt.passes.canonicalize import canonicalize
from graphrt.passes.capture_planning import CapturePlan, Segment, Sync, plan_capture
from graphrt.passes.constant_folding import fold_constants
from graphrt.passes.cse import eliminate_common_subexpressions
from graphrt.passes.dead_code import eliminate_dead_code, remove_dead_carried
from graphrt.passes.fusion import fuse
from graphrt.passes.graph_utils import copy_graph
from graphrt.passes.hoist_invariants import hoist_invariants
from graphrt.passes.manager import (Pass, PassError, PassManager, PassResult, PassStep, Pipeline, PipelineResult,
                                    rewrite_pass)
from graphrt.passes.memory_planning import BufferSlot, MemoryPlan, plan_memory
from graphrt.passes.pipeline import OPT_LEVELS, default_pipeline, default_steps
from graphrt.passes.stream_assignment import RegionSchedule, StreamSchedule, assign_streams

__all__ = [
    "OPT_LEVELS", "BufferSlot", "CapturePlan", "MemoryPlan", "Pass", "PassError", "PassManager", "PassResult",
    "PassStep", "Pipeline", "PipelineResult", "RegionSchedule", "Segment", "StreamSchedule", "Sync",
    "assign_streams", "canonicalize", "copy_graph", "default_pipeline", "default_steps",
    "eliminate_common_subexpressions", "eliminate_dead_code", "fold_constants", "fuse", "hoist_invariants",
    "plan_capture", "plan_memory", "remove_dead_carried", "rewrite_pass",
]
