"""The lowered step (generated straight-line Python) against the reference interpreter.

Same graphs, same inputs: outputs, tokens, forward counts, emit sizes and log-probs
must be equal bit for bit (float64, T = 0 and T > 0 with the same seed, mixed-mode
sessions), although generated code hands emits over through an outbox instead of
suspending.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import graphrt
from support.decode_oracles import tiny_model
from graphrt.types import tensor
from graphrt.executor import ExecutionError, LoweredGraph, Program
from support.pass_programs import pure_programs, run_session, same

CPU = torch.device("cpu")
MODES = ("ar", "diffusion", "self-spec", "self-spec-quadratic")


def _evaluate(graph, inputs, interpret: bool) -> list:
    prog = Program(LoweredGraph(graph, CPU), inputs, interpret=interpret)
    assert prog.start() is None, "a pure graph must not suspend"
    return [o.clone() if isinstance(o, torch.Tensor) else o for o in prog.outputs or []]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=pure_programs())
def test_generated_code_equals_interpreter_on_random_graphs(program) -> None:
    graph, inputs = program
    from graphrt.passes import default_pipeline

    for g in (graph, default_pipeline(1).run(graph).graph):
        assert same(_evaluate(g, inputs, interpret=False), _evaluate(g, inputs, interpret=True))


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


def _session_results(model, monkeypatch, interpret: bool, requests) -> list:
    return [(r.tokens, r.forwards, r.emit_sizes, r.finish_reason, [float(x) for x in r.logprobs or []])
            for r in run_session(model, monkeypatch, interpret, requests)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("temperature,seed", [(0.0, 0), (0.9, 11)])
def test_generated_code_equals_interpreter_per_policy(model, monkeypatch, mode: str, temperature: float,
                                                      seed: int) -> None:
    req = [(mode, [5, 17, 33, 8], dict(max_new_tokens=11, temperature=temperature, seed=seed, logprobs=True,
                                       ignore_eos=True))]
    got = _session_results(model, monkeypatch, False, req)
    want = _session_results(model, monkeypatch, True, req)
    assert got[0][:4] == want[0][:4]
    assert same(got[0][4], want[0][4])


def test_generated_code_equals_interpreter_in_a_mixed_mode_session(model, monkeypatch) -> None:
    reqs = [(mode, [7 + i, 40, 2 * i + 3], dict(max_new_tokens=9 + i, temperature=0.7 * (i % 2), seed=i,
                                               logprobs=True, min_new_tokens=2, stop_token_ids=[11]))
            for i, mode in enumerate(MODES + MODES)]
    got = _session_results(model, monkeypatch, False, reqs)
    want = _session_results(model, monkeypatch, True, reqs)
    assert [g[:4] for g in got] == [w[:4] for w in want]
    assert same([g[4] for g in got], [w[4] for w in want])


def test_generated_code_prints_and_names_a_failing_node(model) -> None:
    lowered = graphrt.compile("self-spec", model).lowered(CPU)
    code = lowered.code
    assert code.startswith("def ") and "yield _forward" in code and "while " in code and "_outbox.append" in code
    b = graphrt.GraphBuilder("bad")
    x = b.input("x", tensor("i64", "L"))
    g = b.build([b.gather(x, b.const(7))])
    prog = Program(LoweredGraph(g, CPU), {"x": torch.tensor([1, 2])}, interpret=False)
    with pytest.raises(ExecutionError, match=r"node '.*' \(gather\) in graph 'bad' failed"):
        prog.start()


def test_one_op_table_holds_reference_out_variant_and_kernel() -> None:
    from graphrt.executor import resolve_impl
    from graphrt.registry import all_ops, get_op, register_impls

    import graphrt.cuda_kernels  # noqa: F401  (the kernels register themselves on their entries)

    ops = all_ops()
    assert ops["add"].out_variant is not None and "cuda" in ops["sample"].kernels
    assert ops["forward"].out_variant is None and not ops["forward"].kernels
    name = "double_test_op"
    if name not in ops:
        graphrt.register_op(graphrt.OpDef(name, ("x",), {}, lambda ts, a: [ts[0]], lambda x: x * 2))
    register_impls(name, kernels={"cuda": lambda device, simulator: (lambda x: x + x)})
    assert resolve_impl(name, CPU, "off") is get_op(name).reference
    assert resolve_impl(name, CPU, "simulator")(torch.tensor([3])).item() == 6  # the entry's kernel, found in one lookup
