"""``graphrt eval`` end to end on a small random model with a real tokenizer (tiny settings)."""

from __future__ import annotations

import json

import pytest

from graphrt.frontends.cli import main
from graphrt.frontends.training.evaluate import (baseline_record, first_line, make_prompts, prefix_match,
                                                 repetition)
from graphrt.frontends.models.tokenizer import Tokenizer
from test_cli import model_dir  # noqa: F401  (fixture)


def test_prompts_are_cut_at_line_boundaries(model_dir) -> None:  # noqa: F811
    tok = Tokenizer.from_dir(model_dir)
    prompts = make_prompts(tok, 5, 40)
    assert len(prompts) == 5 and len({p.source for p in prompts}) == 5
    for p in prompts:
        assert len(p.ids) <= 40
        assert tok.decode(p.ids).endswith("\n")  # the prompt ends exactly at a line boundary
        assert "\n" not in p.next_line
    assert 0.0 <= baseline_record(prompts)["exact_match"] <= 1.0
    assert first_line("abc\ndef") == "abc"
    for p in prompts:  # the true continuation follows the prompt token for token
        text = tok.decode(p.continuation)
        n = min(len(text), len(p.next_line))
        assert len(p.continuation) == 64 and text[:n] == p.next_line[:n]


def test_quality_measures() -> None:
    assert prefix_match([1, 2, 3, 9], [1, 2, 3, 4, 5]) == 3 and prefix_match([], [1]) == 0
    assert repetition([1, 2, 3, 4, 5, 6]) == 0.0
    assert repetition([1, 2, 3, 4] * 3) == 5 / 9  # 9 4-grams, 4 distinct
    assert repetition([1, 2]) == 0.0


def test_eval_writes_json_markdown_and_plot(model_dir, tmp_path) -> None:  # noqa: F811
    out = tmp_path / "eval.json"
    rc = main(["eval", "--model", str(model_dir), "--prompts", "3", "--max-new-tokens", "4", "--thresholds", "0.5",
               "--speed-prompts", "1", "--batch", "3", "--near-ties", "--json", str(out),
               "--markdown", str(tmp_path / "eval.md"), "--plot", str(tmp_path / "eval.png")])
    assert rc == 0
    records = json.loads(out.read_text())
    modes = [(r["mode"], r["threshold"]) for r in records]
    assert modes == [("copy-previous-line", None), ("true-continuation", None), ("ar", None), ("diffusion", 0.5),
                     ("self-spec", None), ("self-spec-quadratic", None), ("prompt-lookup", None),
                     ("self-spec-lookup", None)]
    for r in records[2:]:
        assert {"exact_match", "tpf", "tokens_per_s", "identical_to_ar", "n_prompts", "prefix_match", "ar_loglik",
                "repetition"} <= set(r)
        assert r["n_prompts"] == 3 and r["tpf"] > 0 and 0 <= r["prefix_match"] <= 4 and r["ar_loglik"] < 0
    ar = next(r for r in records if r["mode"] == "ar")
    for r in records:
        if r["mode"] in ("self-spec", "self-spec-quadratic", "prompt-lookup", "self-spec-lookup"):
            assert r["identical_to_ar"] == 1.0 or r["mode"] == "self-spec"
            assert sum(r["accepted_histogram"]) > 0
            if r["identical_to_ar"] == 1.0:
                assert (r["prefix_match"], r["ar_loglik"], r["repetition"]) == \
                    (ar["prefix_match"], ar["ar_loglik"], ar["repetition"])
    assert records[1]["prefix_match"] == 4 and records[1]["ar_loglik"] < 0
    ss = next(r for r in records if r["mode"] == "self-spec")
    assert ss["identical_to_ar"] == 1.0 or all(m["top2_gap"] < 1e-4 for m in ss["mismatches"])
    hist = ss["accepted_histogram"]
    assert sum(hist) >= ss["n_prompts"]  # one cycle at least per prompt: 4 new tokens, the prefill gives 1
    assert ss["mean_accepted"] == pytest.approx(sum(k * c for k, c in enumerate(hist)) / sum(hist))
    assert (tmp_path / "eval.png").stat().st_size > 1000
    assert "| ar |" in (tmp_path / "eval.md").read_text()


def test_eval_on_a_prompt_file_reports_slot_acceptance(model_dir, tmp_path, capsys) -> None:  # noqa: F811
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "import os\nimport sys\n"}) + "\n"  # both raw-text spellings
                       + json.dumps({"id": "p1", "text": "def f(x):\n    return x\n"}) + "\n")
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(model_dir), "--prompt-file", str(prompts), "--max-new-tokens", "6",
                 "--modes", "ar,self-spec", "--speed-prompts", "0", "--json", str(out)]) == 0
    records = {r["mode"]: r for r in json.loads(out.read_text())}
    assert set(records) == {"ar", "self-spec"} and records["ar"]["n_prompts"] == 2
    assert records["ar"]["tokens_per_s"] is None  # --speed-prompts 0: nothing timed
    ss = records["self-spec"]
    assert ss["exact_match"] is None and ss["prefix_match"] is None and ss["tpf"] > 0
    hist = ss["accepted_histogram"]
    assert len(ss["slot_acceptance"]) == len(hist) - 1
    for j, rate in enumerate(ss["slot_acceptance"], 1):
        assert rate == pytest.approx(sum(hist[j:]) / sum(hist[j - 1:]), abs=1e-4)
    prompts.write_text(json.dumps({"id": "p2", "content": "x"}) + "\n")
    assert main(["eval", "--model", str(model_dir), "--prompt-file", str(prompts), "--modes", "ar"]) == 2
    assert "p.jsonl:1: expected an object with 'messages', 'prompt' or 'text'" in capsys.readouterr().err
    assert main(["eval", "--model", str(model_dir), "--speed-prompts", "-1"]) == 2
    assert "--speed-prompts must be >= 0, found -1" in capsys.readouterr().err
