"""Semantic tests: every semantics-preserving pass, and the default pipeline, change no output.

Random pure graphs (the library's decode chains, constant and shape arithmetic,
duplicates, dead code, pure loops) are evaluated directly; the built-in
policies run end to end on a tiny random model. Outputs must equal the graph
as built (O0) bit for bit, at T = 0 and at T > 0 with the same seed, and
``verify()`` must accept the graph after every pass.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.decode_oracles import tiny_model
from graphrt.frontends import policies
from graphrt.passes import default_pipeline
from graphrt.verify import verify
from support.pass_programs import SINGLE_PASSES, evaluate, generate, pure_programs, same

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
E2E = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(program=pure_programs(), name=st.sampled_from(sorted(SINGLE_PASSES) + ["pipeline"]))
def test_each_pass_preserves_random_pure_graphs(program, name: str) -> None:
    graph, inputs = program
    want = evaluate(graph, inputs)
    if name == "pipeline":
        out = default_pipeline(1).run(graph).graph  # verifies after every pass
    else:
        out = verify(SINGLE_PASSES[name](graph).graph)
    assert same(evaluate(out, inputs, steps=2), want), name


@FAST
@given(program=pure_programs())
def test_pipeline_fuses_and_leaves_input_untouched(program) -> None:
    graph, inputs = program
    before = str(graph)
    result = default_pipeline(1).run(graph)
    assert str(graph) == before  # passes are pure functions
    assert [r["pass"] for r in result.report] == [s.name for s in default_pipeline(1).steps]
    assert same(evaluate(result.graph, inputs), evaluate(graph, inputs))


MODES = {
    "ar": policies.ar(),
    "diffusion": policies.diffusion(block_length=3, threshold=0.7),
    "diffusion-steps": policies.diffusion(block_length=4, threshold=None, steps=2),
    "self-spec": policies.self_spec(block_length=3),
    "self-spec-threshold": policies.self_spec(block_length=4, threshold=0.5),
}


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=1)


@E2E
@given(mode=st.sampled_from(sorted(MODES)), name=st.sampled_from(sorted(SINGLE_PASSES) + ["pipeline"] * 3),
       temperature=st.sampled_from([0.0, 0.0, 0.8, 1.3]), seed=st.integers(0, 2**31 - 1),
       top_k=st.sampled_from([0, 4]), top_p=st.sampled_from([1.0, 0.8]),
       prompt=st.lists(st.integers(3, 90), min_size=1, max_size=5))
def test_passes_preserve_builtin_policies_end_to_end(model, mode: str, name: str, temperature: float, seed: int,
                                                     top_k: int, top_p: float, prompt: list[int]) -> None:
    reference = verify(MODES[mode].build(model.config))
    graph = default_pipeline(1).run(reference).graph if name == "pipeline" else \
        verify(SINGLE_PASSES[name](reference).graph)
    params = dict(max_new_tokens=7, temperature=temperature, seed=seed, top_k=top_k, top_p=top_p, logprobs=True)
    want = generate(model, reference, reference, prompt, **params)
    got = generate(model, graph, reference, prompt, **params)
    assert (got.tokens, got.forwards, got.emit_sizes) == (want.tokens, want.forwards, want.emit_sizes), name
    assert same([float(x) for x in got.logprobs], [float(x) for x in want.logprobs]), name
