"""The examples run as written: a transformers model behind the backbone protocol, and a toy scheduler."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example(name: str):
    return runpy.run_path(str(EXAMPLES / name), run_name="example")["main"]


@pytest.mark.parametrize("mode", ["ar", "prompt-lookup", "self-spec-lookup"])
def test_transformers_model_as_backbone(mode: str) -> None:
    out = example("transformers_backbone.py")(["--mode", mode, "--max-new-tokens", "6"])
    assert out["transformers"] == out["graphrt"] and len(out["transformers"]) == 6


def test_toy_scheduler() -> None:
    report = example("toy_scheduler.py")(["--requests", "5", "--max-active", "2", "--max-new-tokens", "10"])
    assert len(report) == 5 and all(r["streamed_ok"] for r in report.values())
    assert report["job1"]["finish_reason"] == "cancelled" and len(report["job1"]["tokens"]) < 10
    assert all(len(r["tokens"]) == 10 for name, r in report.items() if name != "job1")
    assert {r["mode"] for r in report.values()} == {"ar", "diffusion", "self-spec", "self-spec-quadratic"}


def test_session_poll() -> None:
    import graphrt

    model = graphrt.load(max_batch=1)
    session = graphrt.Session(model.backbone, model.tokenizer)
    first = session.add(graphrt.compile("ar", model), model.tokenizer.encode("import os\n"),
                        graphrt.GenerationParams(max_new_tokens=3, ignore_eos=True))
    second = session.add(graphrt.compile("ar", model), [5, 6], graphrt.GenerationParams(max_new_tokens=2))
    seen = []
    while session.has_work:
        new = session.step().get(first, [])
        seen += new
        assert session.poll(first) == seen
        assert session.poll(second) == [] or session.done(first)  # one row: the second waits for the first
    assert session.poll(first) == session.result(first).tokens and len(seen) == 3
    with pytest.raises(KeyError, match="poll: no request with id 99"):
        session.poll(99)


def test_session_release_forgets_a_finished_request() -> None:
    import graphrt

    model = graphrt.load(max_batch=1)
    session = graphrt.Session(model.backbone, model.tokenizer)
    rid = session.add(graphrt.compile("ar", model), [5, 6], graphrt.GenerationParams(max_new_tokens=2))
    with pytest.raises(KeyError, match="is not finished"):
        session.release(rid)
    session.run()
    kept = session.result(rid)
    assert session.release(rid) == kept and not session.done(rid)
    with pytest.raises(KeyError):
        session.result(rid)
    with pytest.raises(KeyError):
        session.release(rid)
