"""CUDA graphs from the capture plan: the runs the executor captures are exactly the plan's segments.

No GPU here: the executor's grouping (cut at control instructions and plan boundaries) is
checked against the plan on CPU for every built-in policy, and the generated code with
capture switched on runs its segments through the capture wrapper, which on CPU fails to
capture, says why and falls back to eager runs with the same tokens.
"""

from __future__ import annotations

import pytest
import torch

import graphrt
from support.decode_oracles import tiny_model
from graphrt.lowering import captured_runs

CPU = torch.device("cpu")
MODES = ("ar", "diffusion", "self-spec", "self-spec-quadratic")


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=2)


def _all_runs(lowered) -> list[tuple[str, tuple[str, ...]]]:
    out = [(r.region, r.nodes) for r in captured_runs(lowered)]
    for sub in lowered.regions.values():
        out += _all_runs(sub)
    return out


@pytest.mark.parametrize("mode", MODES)
def test_executor_captures_exactly_the_plans_segments(model, mode: str) -> None:
    compiled = graphrt.compile(mode, model)
    plan = compiled.graph.annotations["capture"]
    want = [(s.region, s.nodes) for s in plan.segments if s.capturable]
    got = _all_runs(compiled.lowered(CPU))
    assert want and sorted(got) == sorted(want)


def test_generated_code_with_capture_runs_segments_and_falls_back_on_cpu(model, monkeypatch) -> None:
    from graphrt.executor import LoweredGraph

    compiled = graphrt.compile("self-spec", model)
    lowered = LoweredGraph(compiled.graph, CPU)
    lowered.capture = True  # what a CUDA device turns on
    plan = compiled.graph.annotations["capture"]
    assert lowered.code.count("_arena.segment(") == sum(s.capturable for s in plan.segments)
    compiled._lowered[f"{CPU}/{compiled.kernels}"] = lowered
    session = graphrt.Session(model.backbone)
    rid = session.add(compiled, [4, 9, 31], graphrt.GenerationParams(max_new_tokens=12, ignore_eos=True))
    req = session._waiting[0]
    got = session.run()[rid]
    want = graphrt.generate(model, [4, 9, 31], mode="self-spec", max_new_tokens=12, ignore_eos=True, opt_level=0)
    assert (got.tokens, got.forwards) == (want.tokens, want.forwards)
    segments = req.program.arena.segments.values()
    assert segments and all(s.calls >= 1 for s in segments)
    assert all("capture failed" in s.reason for s in segments if s.calls >= 2)
