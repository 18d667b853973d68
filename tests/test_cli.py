"""The ``graphrt generate`` command line on a small random model with a real tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from graphrt.frontends.models.checkpoint import random_checkpoint
from graphrt.frontends.cli import main
from graphrt.frontends.models.config import default_test_config
from graphrt.frontends.models.tokenizer import save_tokenizer, train_tokenizer

TEXT = ["def parse_args(argv):\n    return argv\n", "import os\nimport sys\n", "class A:\n    pass\n"] * 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "model"
    tok = train_tokenizer(TEXT, vocab_size=300)
    cfg = default_test_config(vocab_size=tok.get_vocab_size(), bos_token_id=0, eos_token_id=1, pad_token_id=2,
                              mask_token_id=3)
    random_checkpoint(d, cfg, seed=4)
    save_tokenizer(tok, d)
    return d


@pytest.mark.parametrize("mode", ["ar", "diffusion", "self-spec"])
def test_generate_writes_a_json_record(model_dir, tmp_path, mode: str) -> None:
    out = tmp_path / "rec.json"
    rc = main(["generate", "--model", str(model_dir), "--mode", mode, "--prompt", "def parse_args(",
               "--max-new-tokens", "6", "--json", str(out)])
    assert rc == 0
    rec = json.loads(out.read_text())
    assert rec["mode"] == mode and len(rec["tokens"]) <= 6 and isinstance(rec["text"], str)
    assert rec["forwards"] >= 1 and rec["tpf"] == pytest.approx(len(rec["tokens"]) / rec["forwards"])
    assert rec["seconds"] > 0


def test_self_spec_cli_matches_ar_cli(model_dir, capsys) -> None:
    recs = []
    for mode in ("ar", "self-spec"):
        assert main(["generate", "--model", str(model_dir), "--mode", mode, "--prompt", "import os\n",
                     "--max-new-tokens", "8", "--temperature", "0.8", "--seed", "7", "--json", "-"]) == 0
        recs.append(json.loads(capsys.readouterr().out))
    assert recs[0]["tokens"] == recs[1]["tokens"]


@pytest.mark.parametrize("args,match", [
    (["--max-new-tokens", "0"], "max_new_tokens: expected an int > 0"),
    (["--mode", "diffusion", "--block-length", "0"], "block_length must be a positive int"),
    (["--mode", "diffusion", "--threshold", "2"], r"threshold must be within \[0, 1\]"),
    (["--prompt", ""], "expected non-empty text"),
])
def test_bad_arguments_fail_cleanly_and_write_nothing(model_dir, tmp_path, capsys, args, match) -> None:
    out = tmp_path / "never.json"
    base = ["generate", "--model", str(model_dir), "--prompt", "x", "--json", str(out)]
    assert main(base + args) == 2
    assert match.split("\\")[0].split("[")[0] in capsys.readouterr().err
    assert not out.exists()


def test_missing_model_directory(tmp_path, capsys) -> None:
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "nope" in capsys.readouterr().err


def test_console_script_help() -> None:
    out = subprocess.run([sys.executable, "-m", "graphrt.frontends.cli", "generate", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--block-length" in out and "--json" in out
