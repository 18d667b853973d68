"""``graphrt eval`` end to end on a small random model with a real tokenizer (tiny settings)."""

from __future__ import annotations

import json

import pytest

from graphrt.frontends.cli import main
from graphrt.frontends.training.evaluate import baseline_record, first_line, make_prompts
from graphrt.frontends.tokenizer import Tokenizer
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


def test_eval_writes_json_markdown_and_plot(model_dir, tmp_path) -> None:  # noqa: F811
    out = tmp_path / "eval.json"
    rc = main(["eval", "--model", str(model_dir), "--prompts", "3", "--max-new-tokens", "4", "--thresholds", "0.5",
               "--speed-prompts", "1", "--batch", "3", "--near-ties", "--json", str(out),
               "--markdown", str(tmp_path / "eval.md"), "--plot", str(tmp_path / "eval.png")])
    assert rc == 0
    records = json.loads(out.read_text())
    modes = [(r["mode"], r["threshold"]) for r in records]
    assert modes == [("copy-previous-line", None), ("ar", None), ("diffusion", 0.5), ("self-spec", None),
                     ("self-spec-quadratic", None)]
    for r in records[1:]:
        assert {"exact_match", "tpf", "tokens_per_s", "identical_to_ar", "n_prompts"} <= set(r)
        assert r["n_prompts"] == 3 and r["tpf"] > 0
    ss = next(r for r in records if r["mode"] == "self-spec")
    assert ss["identical_to_ar"] == 1.0 or all(m["top2_gap"] < 1e-4 for m in ss["mismatches"])
    hist = ss["accepted_histogram"]
    assert sum(hist) >= ss["n_prompts"]  # one cycle at least per prompt: 4 new tokens, the prefill gives 1
    assert ss["mean_accepted"] == pytest.approx(sum(k * c for k, c in enumerate(hist)) / sum(hist))
    assert (tmp_path / "eval.png").stat().st_size > 1000
    assert "| ar |" in (tmp_path / "eval.md").read_text()
