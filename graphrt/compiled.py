"""Compiling a policy for a model: build, verify, optimise, lower."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from graphrt.backbone import BackboneConfig
from graphrt.executor import LoweredGraph
from graphrt.ir import Graph
from graphrt.policy import Policy
from graphrt.verify import verify


@dataclass
class CompiledPolicy:
    """A policy built, verified and optimised for one model.

    Attributes
    ----------
    policy:
        What was compiled.
    graph:
        The graph that runs (after the pass pipeline at ``opt_level``).
    reference:
        The graph as built (O0), kept for inspection and equivalence checks.
    overshoot:
        Positions past the budget the policy may forward (cache slack).
    report:
        The pass manager's report (per pass: changed, time), empty at O0.
    kernels:
        Dispatch of fused ops (see :func:`graphrt.executor.resolve_impl`): ``"auto"``
        (CUDA kernels for CUDA tensors), ``"simulator"`` or ``"off"``.
    """

    policy: Policy
    graph: Graph
    reference: Graph
    overshoot: int
    opt_level: int
    report: list[dict[str, Any]] = field(default_factory=list)
    kernels: str = "auto"
    _lowered: dict[str, LoweredGraph] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        """The policy's mode name."""
        return self.policy.name

    def lowered(self, device: torch.device) -> LoweredGraph:
        """The graph lowered for ``device`` (cached per device); at ``opt_level`` 0 it runs
        through the reference interpreter, else as generated code (:mod:`graphrt.lowering`)."""
        key = f"{device}/{self.kernels}"
        if key not in self._lowered:
            self._lowered[key] = LoweredGraph(self.graph, device, self.kernels, interpret=self.opt_level == 0)
        return self._lowered[key]


def compile_policy(policy: Policy, config: BackboneConfig, opt_level: int = 1) -> CompiledPolicy:
    """Build ``policy`` for ``config``, verify it, run the pass pipeline.

    ``opt_level`` 0 runs the graph as built; 1 (default) runs the default
    semantics-preserving pipeline of :mod:`graphrt.passes` when installed.
    """
    if opt_level not in (0, 1, 2):
        raise ValueError(f"compile: opt_level expected 0, 1 or 2, found {opt_level!r}")
    reference = verify(policy.build(config))
    graph, report = reference, []
    if opt_level > 0:
        try:
            from graphrt.passes import default_pipeline
        except ImportError:
            default_pipeline = None
        if default_pipeline is not None:
            result = default_pipeline(opt_level).run(reference)
            graph, report = result.graph, result.report
    return CompiledPolicy(policy, graph, reference, int(policy.overshoot(config)), opt_level, report)
