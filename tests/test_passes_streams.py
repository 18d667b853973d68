"""Stream schedules: every execution order the streams and events allow gives the same result."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphrt.executor as executor
from support.decode_oracles import tiny_model
from graphrt.backbone import BackboneConfig
from graphrt.frontends import policies
from graphrt.passes import assign_streams, default_pipeline
from graphrt.passes.graph_utils import regions_with_keys
from support.pass_programs import evaluate, generate, pure_programs, random_order, same

CONFIG = BackboneConfig(vocab_size=96, max_positions=256, mask_token_id=95, bos_token_id=1, eos_token_id=2,
                        block_size=4)


def _closure_reaches(constraints: list[tuple[str, str]], src: str, dst: str) -> bool:
    succ: dict[str, list[str]] = {}
    for u, v in constraints:
        succ.setdefault(u, []).append(v)
    stack, seen = [src], {src}
    while stack:
        for m in succ.get(stack.pop(), ()):
            if m == dst:
                return True
            if m not in seen:
                seen.add(m)
                stack.append(m)
    return False


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=pure_programs(), orders=st.lists(st.integers(0, 2**32), min_size=3, max_size=3),
       max_streams=st.sampled_from([2, 4]))
def test_every_order_the_schedule_allows_gives_the_same_result(program, orders: list[int], max_streams: int) -> None:
    graph, inputs = program
    steps = default_pipeline(1).steps
    steps = [s if s.name != "assign_streams" else s.__class__(s.name, lambda g: assign_streams(g, max_streams),
                                                                     s.reason) for s in steps]
    from graphrt.passes import Pipeline

    optimised = Pipeline(steps).run(graph).graph
    want = evaluate(graph, inputs)
    for seed in orders:
        reordered = random_order(optimised, random.Random(seed))  # verify() inside: data order respected
        assert same(evaluate(reordered, inputs, steps=2), want)


@pytest.mark.parametrize("mode", ["ar", "diffusion", "self-spec"])
def test_schedule_implies_every_dependency_of_the_builtin_modes(mode: str) -> None:
    graph = default_pipeline(1).run(policies.policy_for_mode(mode).build(CONFIG)).graph
    sched = graph.annotations["streams"]
    assert sched.num_streams > 1 and sched.num_events > 0
    for key, region in regions_with_keys(graph):
        rs = sched.regions[key]
        cons = list(rs.constraints())
        for node, preds in rs.deps.items():
            for p in preds:
                assert _closure_reaches(cons, p, node), f"{key}: {p} -> {node} not implied"
        ordered = [n.name for n in region.nodes if n.op in ("forward", "emit", "commit", "loop")]
        assert all(rs.stream[n] == 0 for n in ordered)


def test_one_stream_means_program_order_and_no_events() -> None:
    graph = policies.build_self_spec(CONFIG)
    sched = assign_streams(graph, max_streams=1).graph.annotations["streams"]
    assert sched.num_streams == 1 and sched.num_events == 0
    with pytest.raises(ValueError, match="max_streams expected >= 1"):
        assign_streams(graph, max_streams=0)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(["ar", "diffusion", "self-spec"]), order=st.integers(0, 2**32),
       temperature=st.sampled_from([0.0, 0.9]))
def test_builtin_modes_in_random_schedule_orders_match_o0(mode: str, order: int, temperature: float) -> None:
    model = tiny_model(seed=2)
    reference = policies.policy_for_mode(mode, block_length=3).build(model.config)
    optimised = default_pipeline(1).run(reference).graph
    reordered = random_order(optimised, random.Random(order))
    params = dict(max_new_tokens=6, temperature=temperature, seed=order % 1000, logprobs=True)
    want = generate(model, reference, reference, [4, 5, 6], **params)
    got = generate(model, reordered, reference, [4, 5, 6], **params)
    assert (got.tokens, got.forwards) == (want.tokens, want.forwards)
    assert same([float(x) for x in got.logprobs], [float(x) for x in want.logprobs])


class _FakeStreams:
    """Stands in for CUDA streams on CPU: checks that every wait follows its record, joins precede syncs."""

    log: list[tuple[str, int, int]] = []

    def __init__(self, num_streams: int) -> None:
        self.num_streams = num_streams
        self.recorded: set[int] = set()

    def fork(self) -> None:
        self.recorded.clear()
        _FakeStreams.log.append(("fork", id(self), 0))

    def join(self) -> None:
        _FakeStreams.log.append(("join", id(self), 0))

    def compute(self, index, ins, args, arena):
        for w in ins.waits:
            assert w in self.recorded, f"{ins.node.name} waits for instruction {w} before it was recorded"
            assert w < index
        result = executor._compute(ins, args, arena)
        if ins.record:
            self.record(index, ins, arena)
        _FakeStreams.log.append(("run", id(self), ins.stream))
        return result

    def record(self, index, ins, arena) -> None:
        self.recorded.add(index)


def test_executor_issues_schedule_with_waits_after_records(monkeypatch) -> None:
    monkeypatch.setattr(executor, "make_stream_runner", lambda n, device: _FakeStreams(n) if n > 1 else None)
    _FakeStreams.log = []
    model = tiny_model(seed=0)
    got = generate(model, default_pipeline(1).run(policies.build_self_spec(model.config)).graph,
                   policies.build_self_spec(model.config), [3, 4], max_new_tokens=6)
    monkeypatch.undo()
    reference = policies.build_self_spec(model.config)
    assert got.tokens == generate(model, reference, reference, [3, 4], max_new_tokens=6).tokens
    kinds = {k for k, _, _ in _FakeStreams.log}
    assert kinds == {"fork", "join", "run"} and any(s > 0 for k, _, s in _FakeStreams.log if k == "run")


class _FakeCudaLayer:
    """Stands in for :mod:`graphrt.cuda_kernels.streams` on CPU: logs what the real StreamRunner asks of it."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, int]] = []  # (what, stream, event id)
        layer = self

        class Event:
            def record(self, stream):
                layer.log.append(("record", stream.name, id(self)))
                return self

        class Stream:
            created = 0

            def __init__(self, name: str) -> None:
                self.name = name

            @classmethod
            def create(cls, device=None):
                cls.created += 1
                return cls(f"side{cls.created}")

            @classmethod
            def from_torch(cls, stream):
                return cls("current")

            def torch(self):
                return self

            def record(self, event):
                return event.record(self)

            def wait(self, event) -> None:
                layer.log.append(("wait", self.name, id(event)))

        self.Event, self.Stream = Event, Stream


def test_stream_runner_drives_the_cuda_python_layer(monkeypatch) -> None:
    """The real StreamRunner over a fake cuda-python layer (CPU): side streams wait for the current stream's
    fork event, every wait is for an event recorded before on another stream, and the tokens match."""
    import contextlib

    import graphrt.cuda_kernels

    layer = _FakeCudaLayer()
    monkeypatch.setattr(graphrt.cuda_kernels, "streams", layer)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(executor, "make_stream_runner",
                        lambda n, device: executor.StreamRunner(n, device) if n > 1 else None)
    model = tiny_model(seed=0)
    reference = policies.build_self_spec(model.config)
    got = generate(model, default_pipeline(1).run(reference).graph, reference, [3, 4], max_new_tokens=6)
    monkeypatch.undo()
    assert got.tokens == generate(model, reference, reference, [3, 4], max_new_tokens=6).tokens
    recorded: dict[int, str] = {}
    waits = 0
    for what, stream, event in layer.log:
        if what == "record":
            recorded[event] = stream
            continue
        waits += 1
        assert event in recorded, f"{stream} waits for an event never recorded"
        assert recorded[event] != stream, f"{stream} waits for its own event"
    assert waits and {s for _, s, _ in layer.log} > {"current"}


def test_cpu_runs_in_program_order_without_a_runner() -> None:
    model = tiny_model(seed=0)
    compiled = default_pipeline(1).run(policies.build_ar(model.config)).graph
    lowered = executor.LoweredGraph(compiled, torch.device("cpu"))
    assert lowered.streams is None and all(sub.streams is None for sub in lowered.regions.values())
    assert any(ins.stream > 0 for sub in lowered.regions.values() for ins in sub.instrs)
    assert executor.make_stream_runner(3, torch.device("cpu")) is None
    assert executor.make_stream_runner(1, torch.device("cuda")) is None  # one stream: program order, no CUDA call


def _side_stream_graph():
    """A pure graph whose schedule opens a side stream next to a loop on the host's stream."""
    from graphrt.builder import GraphBuilder
    from graphrt.types import tensor

    b = GraphBuilder("g")
    x = b.input("x", tensor("i64", 3))
    side = (x + 1) * 2                                  # opens a side stream
    (looped,) = b.loop(b.const(True, "bool"), [side], lambda v: (b.const(False, "bool"), v + 1))
    return b.build([looped * 3, side - 1])


def test_control_ops_stay_on_the_hosts_stream() -> None:
    """A pure loop runs on the host like any control op: it must be scheduled on stream 0 so that
    consumers on other streams wait for it."""
    graph = _side_stream_graph()
    rs = assign_streams(graph).graph.annotations["streams"].regions[""]
    loop = next(n.name for n in graph.nodes if n.op == "loop")
    assert rs.stream[loop] == 0


# GPU tier (NUMBA_ENABLE_CUDASIM=0 pytest -m gpu): the StreamRunner on cuda-python streams. NOT YET RUN ON A GPU.
@pytest.mark.gpu
@pytest.mark.parametrize("interpret", [True, False])
def test_stream_runner_on_cuda_python_streams_matches_cpu(interpret: bool) -> None:
    from graphrt.cuda_kernels.streams import Stream

    graph = assign_streams(_side_stream_graph()).graph
    x = torch.tensor([1, 2, 3])
    want = evaluate(graph, {"x": x})
    lowered = executor.LoweredGraph(graph, torch.device("cuda"))
    runner = lowered.streams
    assert isinstance(runner, executor.StreamRunner) and runner.side
    assert all(isinstance(s, Stream) and s.owned for s in runner.side)
    for _ in range(2):  # the second run reuses the program-independent fork/join events
        prog = executor.Program(lowered, {"x": x.cuda()}, interpret=interpret)
        assert prog.start() is None
        torch.cuda.synchronize()
        assert same([o.cpu() for o in prog.outputs], want)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["ar", "diffusion", "self-spec"])
def test_stream_scheduled_modes_on_cuda_match_the_reference(mode: str) -> None:
    from graphrt.api import Model
    from graphrt.frontends.models.transformer import TransformerBackbone

    net = tiny_model(seed=1).backbone.model.cuda()
    model = Model(TransformerBackbone(net, max_rows=2), None, "random-1-cuda")
    reference = policies.policy_for_mode(mode, block_length=3).build(model.config)
    optimised = default_pipeline(1).run(reference).graph
    assert optimised.annotations["streams"].num_streams > 1
    got = generate(model, optimised, reference, [4, 5, 6], max_new_tokens=6)
    want = generate(model, reference, reference, [4, 5, 6], max_new_tokens=6)
    assert (got.tokens, got.forwards) == (want.tokens, want.forwards)
