"""Memory planning: sound buffer sharing, a byte report, and no allocation for planned values in steady state."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import graphrt
from support.decode_oracles import tiny_model
from graphrt.analysis import logprob_only_nodes, region_reads
from graphrt.executor import Arena
from graphrt.passes import default_pipeline
from graphrt.passes.effects import VIEW_OPS
from graphrt.passes.graph_utils import regions_with_keys
from graphrt.passes.memory_planning import MemoryPlan
from support.pass_programs import pure_programs


def _plan(graph) -> MemoryPlan:
    return graph.annotations["memory"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=pure_programs())
def test_values_sharing_a_buffer_are_never_live_together(program) -> None:
    """An independent liveness check: per region, a shared slot's values have disjoint live ranges
    (a value lives from its definition to the last read of it or of any view of it)."""
    graph = default_pipeline(1).run(program[0]).graph
    plan = _plan(graph)
    for key, region in regions_with_keys(graph):
        pos, last = {}, {}
        alias = {}  # view value -> base value
        for i, node in enumerate(region.nodes):
            reads = list(node.inputs) + (region_reads(node) if node.regions else [])
            for v in reads:
                base = alias.get(id(v), id(v))
                last[base] = max(last.get(base, -1), i)
            for v in node.outputs:
                pos[id(v)] = i
                if node.op in VIEW_OPS:
                    alias[id(v)] = alias.get(id(node.inputs[0]), id(node.inputs[0]))
        for v in region.outputs:
            base = alias.get(id(v), id(v))
            last[base] = len(region.nodes)
        by_name = {v.name: v for n in region.nodes for v in n.outputs}
        for slot in plan.slots:
            if slot.region != key or len(slot.values) < 2:
                continue
            spans = sorted((pos[id(by_name[n])], last.get(id(by_name[n]), pos[id(by_name[n])])) for n in slot.values)
            for (_, end), (start, _) in zip(spans, spans[1:]):
                assert end < start, f"slot {slot.index} of region {key!r}: live ranges overlap {spans}"


def test_plan_reports_bytes_and_sharing_saves_memory() -> None:
    model = tiny_model(seed=0)
    for mode in ("ar", "diffusion", "self-spec"):
        graph = graphrt.compile(mode, model).graph
        plan = _plan(graph)
        planned = plan.bytes({"V": 96})[()]
        assert 0 < planned < plan.unshared_bytes({"V": 96})[()], mode
        assert set(plan.bytes()) <= {(), ("V",)}             # symbolic in the vocabulary only
        assert "planned bytes" in plan.summary({"V": 96})
        assert any(s.kind == "carried" for s in plan.slots), mode   # step results reuse their buffer
        assert all(mode_ in ("out", "copy", "once") for mode_ in plan.mode.values())


def _steady_state(model, mode: str, **params) -> tuple[list[tuple[int, int, int]], Arena]:
    """Step a session; snapshot (buffers, bound instructions, misses) after every emit-carrying round."""
    session = graphrt.Session(model.backbone)
    rid = session.add(graphrt.compile(mode, model), [5, 6, 7],
                      graphrt.GenerationParams(max_new_tokens=36, ignore_eos=True, **params))
    snaps, arena = [], None
    while session.has_work:
        session.step()
        req = session._active.get(rid)
        if req is None:
            break
        arena = req.program.arena
        snaps.append((len(arena.buffers), len(arena.bound), arena.misses,
                      tuple(sorted(t.data_ptr() for t in arena.buffers.values()))))
    assert arena is not None
    return snaps, arena


@pytest.mark.parametrize("mode,params", [("ar", {}), ("diffusion", {"temperature": 0.9, "seed": 4}),
                                         ("self-spec", {"temperature": 0.7, "seed": 2})])
def test_steady_state_steps_allocate_no_planned_tensor(mode: str, params: dict) -> None:
    """After the first full cycle, every planned value is written into the same buffers: the arena
    neither grows nor moves, and every planned instruction found its buffer (no misses)."""
    model = tiny_model(seed=0)
    snaps, arena = _steady_state(model, mode, **params)
    warm = len(snaps) // 2
    assert len(snaps) > warm + 3
    assert all(s == snaps[warm] for s in snaps[warm:]), mode
    assert arena.misses == 0
    lowered = graphrt.compile(mode, model).lowered(torch.device("cpu"))
    planned = _planned_instrs(lowered)
    skipped = logprob_only_nodes(lowered.graph)              # no log-probs asked for: those nodes never run
    assert planned and len(arena.bound) == sum(ins.node.name not in skipped for ins in planned)
    with_out = sum(ins.out_impl is not None or ins.mode == "once" for ins in planned)
    assert with_out / len(planned) > 0.5                     # most write in place, without a temporary


def _planned_instrs(lowered) -> list:
    out = [ins for ins in lowered.instrs if ins.slot is not None]
    for sub in lowered.regions.values():
        out += _planned_instrs(sub)
    return out


def test_planned_nodes_write_into_their_buffer_every_step(monkeypatch) -> None:
    """Spy on the planned instructions: every run after the first writes into, and returns, the very
    buffer the instruction was bound to, whether it goes through Arena.run or is called directly."""
    model = tiny_model(seed=0)
    policy = graphrt.compile("self-spec", model)
    lowered = policy.lowered(torch.device("cpu"))
    seen: dict[int, set[int]] = {}
    runs: dict[int, int] = {}

    def spying(ins):
        variant = ins.out_impl

        def spy(*args, out, **attrs):
            result = variant(*args, out=out, **attrs)
            assert result is out
            seen.setdefault(id(ins), set()).add(out.data_ptr())
            return result
        return spy

    original = Arena.run

    def count(self, ins, args):
        runs[id(ins)] = runs.get(id(ins), 0) + 1
        result = original(self, ins, args)
        assert result is self.bound[id(ins)]
        return result

    planned = _planned_instrs(lowered)
    for ins in planned:
        if ins.out_impl is not None:
            monkeypatch.setattr(ins, "out_impl", spying(ins))
    monkeypatch.setattr(Arena, "run", count)
    session = graphrt.Session(model.backbone)
    session.add(policy, [9, 8, 7], graphrt.GenerationParams(max_new_tokens=20, ignore_eos=True))
    session.run()
    assert seen and all(len(ptrs) == 1 for ptrs in seen.values())
    direct = [ins for ins in planned if ins.out_impl is not None or ins.mode == "once"]
    assert direct and all(runs.get(id(ins), 0) <= 1 for ins in direct)  # after binding: called directly
