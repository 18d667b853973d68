"""``graphrt bench`` end to end in a reduced configuration (tiny random float64 model, few tokens).

Checks the JSON schema, the chart and the Markdown, and that the reference-style
loops (a transformers model with its dynamic cache) and the hand-written loop give
graphrt's tokens with graphrt's forward counts. No timing is asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from graphrt.frontends.models.checkpoint import random_checkpoint  # noqa: E402
from graphrt.frontends.cli import main  # noqa: E402
from graphrt.frontends.models.config import default_test_config  # noqa: E402

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


# ----------------------------------------------------------------------------- the real-model benchmark's code path
REAL_RECORD_KEYS = {"contender", "backend", "mode", "batch", "kind", "tokens_per_s", "tpf", "vs_graphrt_ar",
                    "peak_rss_mb", "run_peak_rss_mb", "same_tokens_as_ar", "groups", "repeats"}
LOSSLESS = ("ar", "prompt-lookup", "self-spec-lookup", "self-spec", "self-spec-quadratic")


@pytest.fixture(scope="module")
def real_doc(tmp_path_factory) -> dict:
    """``graphrt bench --suite real`` on the shipped model (graphrt.load()), in this process, tiny sizes.

    Batch 2 (a batch of one takes the same path), the lossless modes only, and the
    llama.cpp contender asked for (skipped: the shipped model has no GGUF file).
    """
    tmp = tmp_path_factory.mktemp("real_bench")
    out = tmp / "real.json"
    rc = main(["bench", "--suite", "real", "--in-process", "--contenders", "graphrt-eager,llama-cpp-f32",
               "--modes", ",".join(LOSSLESS), "--kinds", "chat,continuation", "--prompts", "2", "--batches", "2",
               "--max-new-tokens", "5", "--max-prompt-tokens", "16", "--repeats", "1", "--forward-widths", "1,3",
               "--forward-cost-repeats", "1", "--bandwidth-mb", "16", "--json", str(out), "--markdown", str(tmp / "real.md"),
               "--plot", str(tmp / "real.png")])
    assert rc == 0
    doc = json.loads(out.read_text())
    doc["_tmp"] = tmp
    return doc


def test_real_bench_schema(real_doc: dict) -> None:
    records = real_doc["records"]
    assert {(r["mode"], r["batch"], r["kind"]) for r in records} == {
        (m, 2, k) for m in LOSSLESS for k in ("chat", "continuation", "all")}
    for r in records:
        assert REAL_RECORD_KEYS <= set(r), sorted(REAL_RECORD_KEYS - set(r))
        assert r["contender"] == "graphrt eager" and r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert r["tpf"] > 0 and r["vs_graphrt_ar"] > 0
    assert all(run["tokens"] == 5 * run["batch"] for run in real_doc["runs"])  # EOS ignored: the full budget
    assert {p["kind"] for p in real_doc["prompts"]} == {"chat", "continuation"}
    assert all(p["tokens"] <= 16 for p in real_doc["prompts"])
    assert [p["source"] for p in real_doc["prompts"] if p["kind"] == "continuation"] == ["getopt.py", "py_compile.py"]
    assert set(real_doc["forward_cost"]["ms"]["graphrt eager"]) == {"1", "3"}
    assert real_doc["bandwidth"]["stream_read_gb_per_s"] > 0 and real_doc["bandwidth"]["floor_ms"] > 0
    assert {s["contender"] for s in real_doc["skipped"]} == {"llama-cpp-f32"}  # the shipped model has no GGUF
    md = (real_doc["_tmp"] / "real.md").read_text()
    assert "| graphrt eager | self-spec-lookup |" in md and "bandwidth floor" in md
    assert (real_doc["_tmp"] / "real.png").stat().st_size > 10_000


def test_real_bench_lossless_modes_give_ar_tokens(real_doc: dict) -> None:
    for r in real_doc["records"]:
        assert r["same_tokens_as_ar"] == 1.0, (r["mode"], r["batch"], r["kind"])


def test_real_bench_prompt_files_are_heldout() -> None:
    from graphrt.frontends.training.corpus import split_of

    prompts = Path(__file__).resolve().parents[1] / "bench" / "prompts"
    for kind in ("chat", "code_edit", "continuation"):
        records = [json.loads(line) for line in (prompts / f"{kind}.jsonl").read_text().splitlines()]
        assert len(records) == 8 and all(r["kind"] == kind for r in records)
        assert all(("messages" in r) == (kind != "continuation") for r in records)
        assert all(split_of(r["source"]) == "heldout" for r in records if kind != "chat")
