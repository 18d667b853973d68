"""The pass manager: straight named pipeline, verification after each pass, report, dumps, opt levels."""

from __future__ import annotations

import pytest

import graphrt
from support.decode_oracles import tiny_model
from graphrt.backbone import BackboneConfig
from graphrt.frontends import policies
from graphrt.ir import Graph, Value
from graphrt.passes import PassError, PassResult, PassStep, Pipeline, copy_graph, default_pipeline
from graphrt.passes.manager import DUMP_ENV
from graphrt.types import scalar

CONFIG = BackboneConfig(vocab_size=96, max_positions=256, mask_token_id=95, bos_token_id=1, eos_token_id=2,
                        block_size=4)


def _graph() -> Graph:
    return policies.build_self_spec(CONFIG)


def _breaks(graph: Graph) -> PassResult:
    out = copy_graph(graph)
    node = next(n for n in out.walk() if n.op == "add")
    node.inputs[0] = Value("ghost", scalar("i64"))      # a dangling read
    return PassResult(out, True)


def test_report_has_one_timed_entry_per_pass_with_a_change_log() -> None:
    result = default_pipeline(1).run(_graph())
    assert [r["pass"] for r in result.report] == [s.name for s in default_pipeline(1).steps]
    for r in result.report:
        assert r["reason"] and r["seconds"] >= 0 and r["verify_seconds"] >= 0
    fuse = next(r for r in result.report if r["pass"] == "fuse")
    assert fuse["changed"] and fuse["ops_added"]["sample"] == 3 and fuse["ops_removed"]["where"] >= 3
    dce = next(r for r in result.report if r["pass"] == "dce")
    assert dce["ops_removed"]["noise"] >= 1 and dce["nodes_after"] < dce["nodes_before"]
    text = result.format_report()
    assert "fuse" in text and " ms " in text and " ms " not in result.format_report(timings=False)


def test_a_pass_that_breaks_the_graph_is_named() -> None:
    steps = default_pipeline(1).steps[:2] + [PassStep("oops", _breaks, "a broken pass for the test")]
    with pytest.raises(PassError, match=r"pass 3/3 'oops' produced an invalid graph: .*ghost.*dangling"):
        Pipeline(steps, name="test").run(_graph())
    assert Pipeline(steps, verify_each=False).run(_graph()).report[-1]["pass"] == "oops"


def test_a_pass_must_return_a_pass_result() -> None:
    with pytest.raises(PassError, match="'bad'.*expected a PassResult, found Graph"):
        Pipeline([PassStep("bad", lambda g: g, "returns a graph")]).run(_graph())  # type: ignore[arg-type,return-value]


def test_passes_do_not_modify_their_input() -> None:
    graph = _graph()
    before = str(graph)
    for step in default_pipeline(1).steps:
        step.fn(graph)
        assert str(graph) == before, step.name
    assert not getattr(graph, "annotations", None)


def test_dumps_text_and_dot_after_every_pass(tmp_path, monkeypatch) -> None:
    default_pipeline(1, dump_dir=tmp_path / "a").run(_graph())
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names[:2] == ["00_input.dot", "00_input.txt"] and "05_fuse.txt" in names and "10_plan_capture.dot" in names
    assert "sample(" in (tmp_path / "a" / "05_fuse.txt").read_text()
    assert (tmp_path / "a" / "05_fuse.dot").read_text().startswith("digraph")
    monkeypatch.setenv(DUMP_ENV, str(tmp_path / "b"))
    graphrt.compile("ar", tiny_model(0))                 # compile_policy's pipeline honours the variable
    assert (tmp_path / "b" / "00_input.txt").exists()


def test_opt_levels() -> None:
    assert default_pipeline(0).steps == [] and default_pipeline(0).run(_graph()).report == []
    assert [s.name for s in default_pipeline(2).steps] == [s.name for s in default_pipeline(1).steps]
    with pytest.raises(ValueError, match="opt_level expected one of"):
        default_pipeline(3)
    assert len(default_pipeline(1).describe().splitlines()) == len(default_pipeline(1).steps)
    with pytest.raises(ValueError, match="unique"):
        Pipeline([default_pipeline(1).steps[0]] * 2)


def test_compile_policy_runs_the_pipeline() -> None:
    model = tiny_model(0)
    o1, o0 = graphrt.compile("self-spec", model), graphrt.compile("self-spec", model, opt_level=0)
    assert o1.report and not o0.report and o0.graph is o0.reference
    assert {"memory", "streams", "capture"} <= set(o1.graph.annotations)
    assert o1.graph.num_nodes() < o0.graph.num_nodes()
