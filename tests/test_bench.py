"""``graphrt bench`` end to end in a reduced configuration (tiny random float64 model, few tokens).

Checks the JSON schema, the chart and the Markdown, and that the reference-style
loops (a transformers model with its dynamic cache) and the hand-written loop give
graphrt's tokens with graphrt's forward counts. No timing is asserted.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from graphrt.frontends.checkpoint import random_checkpoint  # noqa: E402
from graphrt.frontends.cli import main  # noqa: E402
from graphrt.frontends.config import default_test_config  # noqa: E402

RECORD_KEYS = {"contender", "backend", "mode", "batch", "tokens_per_s", "tpf", "ms_per_forward", "peak_rss_mb",
               "forwards_by_width", "outside_forward_share", "tokens"}


@pytest.fixture(scope="module")
def bench_doc(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("bench")
    model = random_checkpoint(tmp / "tiny", default_test_config(), seed=3, dtype=torch.float64)
    out = tmp / "bench.json"
    rc = main(["bench", "--model", str(model), "--dtype", "float64",
               "--contenders", "graphrt-eager,hand-loop-eager,transformers,reference",
               "--prompts", "1", "--prompt-tokens", "10", "--max-new-tokens", "9", "--forward-cost-repeats", "1",
               "--sweep-lengths", "8,24", "--sweep-positions", "64", "--sweep-new-tokens", "3", "--sweep-repeats", "1",
               "--json", str(out), "--plot", str(tmp / "bench.png"), "--markdown", str(tmp / "bench.md")])
    assert rc == 0
    doc = json.loads(out.read_text())
    doc["_tmp"] = tmp
    return doc


def test_json_schema(bench_doc: dict) -> None:
    records = bench_doc["records"]
    assert {(r["contender"], r["batch"]) for r in records} >= {
        ("graphrt eager", 1), ("graphrt eager", 8), ("hand loop eager", 1), ("hand loop eager", 8),
        ("transformers generate", 1), ("transformers generate", 8), ("reference loop", 1)}
    assert {r["mode"] for r in records if r["contender"] == "graphrt eager"} == {
        "ar", "diffusion", "self-spec", "self-spec-quadratic"}
    for r in records:
        assert RECORD_KEYS <= set(r), sorted(RECORD_KEYS - set(r))
        assert r["tokens_per_s"] > 0 and r["tpf"] > 0 and r["peak_rss_mb"] > 0
        assert r["tokens"] == 9 * r["batch"]  # EOS ignored: every contender decodes the full budget
        assert r["ms_per_forward"] and all(float(v) > 0 for v in r["ms_per_forward"].values())
        assert set(r["ms_per_forward"]) == set(r["forwards_by_width"])
    ar = next(r for r in records if r["contender"] == "graphrt eager" and r["mode"] == "ar" and r["batch"] == 1)
    assert ar["tpf"] == pytest.approx(1.0) and set(ar["forwards_by_width"]) == {"1", "10"}
    assert bench_doc["machine"]["cores"] and bench_doc["command"].startswith("graphrt bench")
    assert [f["backend"] for f in bench_doc["forward_cost"]] == ["eager"]
    assert set(bench_doc["forward_cost"][0]["ms"]) == {"1", "8", "72"}
    sweep = bench_doc["context_sweep"]
    assert {(s["contender"], s["prompt_tokens"]) for s in sweep} == {
        (c, n) for c in ("graphrt eager", "transformers generate") for n in (8, 24)}
    proj = bench_doc["projection"]
    assert proj["assumptions"]["note"] and {r["gpu"] for r in proj["rows"]} == {"H100 SXM", "H200"}
    assert {r["ratio"] for r in bench_doc["ratios"]} >= {"graphrt eager ar / transformers generate, batch 1",
                                                       "graphrt eager self-spec / graphrt eager ar, batch 1"}
    assert (bench_doc["_tmp"] / "bench.png").stat().st_size > 10_000
    md = (bench_doc["_tmp"] / "bench.md").read_text()
    assert "Machine:" in md and "PROJECTION" in md and "| graphrt eager | self-spec | 1 |" in md


def test_reference_loops_give_graphrt_tokens_and_forwards(bench_doc: dict) -> None:
    same = bench_doc["same_tokens"]
    assert same["reference loop diffusion batch 1"] == 1.0
    assert same["reference loop self-spec batch 1"] == 1.0
    assert same["hand loop eager ar batch 1"] == 1.0 and same["hand loop eager ar batch 8"] == 1.0
    recs = bench_doc["records"]
    for mode in ("diffusion", "self-spec"):
        ours = next(r for r in recs if r["contender"] == "graphrt eager" and r["mode"] == mode and r["batch"] == 1)
        ref = next(r for r in recs if r["contender"] == "reference loop" and r["mode"] == mode)
        assert ref["forwards_by_width"] == ours["forwards_by_width"], mode
