"""The command line on real checkpoint layouts: generate / chat / show, policy files, traces, knobs, --json."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import transformers

from graphrt.frontends.cli import main
from graphrt.frontends.fixtures import write_release_checkpoint, write_transformers_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MODES = ("ar", "diffusion", "self-spec", "self-spec-quadratic")
CHAT = [{"role": "user", "content": "Hello! How can I help?"}]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release_checkpoint(tmp_path_factory.mktemp("cli_release") / "nld", seed=4)


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("msgs") / "chat.json"
    p.write_text(json.dumps(CHAT))
    return p


def run_json(capsys, *argv: str) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*argv, "--json", "-"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_release_checkpoint_every_mode(release, chat_file, capsys) -> None:
    recs = {m: run_json(capsys, "generate", "--model", str(release), "--mode", m, "--messages", str(chat_file),
                        "--max-new-tokens", "6", "--ignore-eos") for m in MODES}
    assert recs["self-spec"]["adapter"].endswith("drafter")
    assert recs["ar"]["tokens"] == recs["self-spec"]["tokens"] == recs["self-spec-quadratic"]["tokens"]
    assert all(len(r["tokens"]) == 6 for r in recs.values())
    plain = run_json(capsys, "chat", "--model", str(release), "--mode", "self-spec", "--no-adapter", "--messages",
                     str(chat_file), "--max-new-tokens", "6", "--ignore-eos")
    assert plain["adapter"] is None and plain["tokens"] == recs["ar"]["tokens"]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_transformers_checkpoints_generate_and_chat(tmp_path, chat_file, capsys, kind: str) -> None:
    path = write_transformers_checkpoint(kind, tmp_path / kind, seed=1)
    recs = [run_json(capsys, cmd, "--model", str(path), "--mode", m, "--messages", str(chat_file), "--max-new-tokens",
                     "5", "--ignore-eos") for cmd in ("generate", "chat")
            for m in ("ar", "prompt-lookup", "self-spec-lookup")]
    assert all(r["tokens"] == recs[0]["tokens"] and len(r["tokens"]) == 5 for r in recs)
    rec = run_json(capsys, "generate", "--model", str(path), "--prompt", "Hello", "--max-new-tokens", "3")
    assert isinstance(rec["text"], str) and rec["prompt"] == "Hello"


def test_generate_streams_tokens_as_committed(capsys) -> None:
    assert main(["generate", "--mode", "self-spec", "--prompt", "def parse_args(", "--max-new-tokens", "12"]) == 0
    streamed = capsys.readouterr().out
    assert main(["generate", "--mode", "self-spec", "--prompt", "def parse_args(", "--max-new-tokens", "12",
                 "--json", "-"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert streamed == "def parse_args(" + rec["text"] + "\n"
    stop = rec["text"][5:8]
    args = ["generate", "--prompt", "def parse_args(", "--max-new-tokens", "12", "--stop", stop]
    assert main(args) == 0
    streamed = capsys.readouterr().out
    assert main(args + ["--json", "-"]) == 0
    cut = json.loads(capsys.readouterr().out)["text"]
    assert streamed == "def parse_args(" + cut + "\n" and cut == rec["text"][:rec["text"].index(stop)]


def test_interactive_chat(release, monkeypatch, capsys, tmp_path) -> None:
    lines = iter(["Hello!", "And again?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    out = tmp_path / "chat.json"
    assert main(["chat", "--model", str(release), "--max-new-tokens", "4", "--system", "Be brief.", "--json",
                 str(out)]) == 0
    rec = json.loads(out.read_text())
    assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert len(rec["turns"]) == 2 and "model> " in capsys.readouterr().out


def test_chat_without_template_is_refused(tmp_path, capsys) -> None:
    path = write_transformers_checkpoint("qwen2", tmp_path / "q", chat_template=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["chat", "--model", str(path), "--messages", str(ROOT / "examples" / "chat.json")]) == 2
    assert "has no chat template" in capsys.readouterr().err


def test_logprobs_stop_id_thinking_budget(release, chat_file, capsys) -> None:
    base = ["generate", "--model", str(release), "--messages", str(chat_file), "--max-new-tokens", "8", "--ignore-eos"]
    rec = run_json(capsys, *base, "--logprobs")
    assert len(rec["logprobs"]) == 8 and all(lp <= 0 for lp in rec["logprobs"])
    stop = rec["tokens"][2]
    cut = run_json(capsys, *base, "--stop-id", str(stop))
    assert cut["tokens"] == rec["tokens"][:rec["tokens"].index(stop) + 1] and cut["finish_reason"] == "stop"
    think = run_json(capsys, *base, "--thinking-budget", "3")  # end-of-thinking id from the tokenizer's </think>
    end_think = transformers.AutoTokenizer.from_pretrained(release).convert_tokens_to_ids("</think>")
    assert think["tokens"][3] == end_think and think["tokens"][:3] == rec["tokens"][:3]


@pytest.mark.parametrize("args,match", [
    (["--threshold", "0.5"], "--threshold: applies to --mode diffusion"),
    (["--block-length", "4"], "--block-length: applies to --mode diffusion"),
    (["--mode", "prompt-lookup", "--adapter", "x"], "--adapter: the drafter applies to"),
    (["--top-k", "5"], "--top-k: applies only when sampling"),
    (["--end-think-id", "7"], "--end-think-id: applies with --thinking-budget only"),
    (["--mode", "ar", "--policy", "p.py"], "--policy and --mode"),
    (["--trace", "t.svg"], "--trace: expected a file ending in .html or .png"),
])
def test_knobs_that_do_not_apply_are_refused(tmp_path, capsys, args, match) -> None:
    out = tmp_path / "never.json"
    assert main(["generate", "--prompt", "x", "--json", str(out), *args]) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("command", [
    ["generate", "--prompt", "x"], ["chat"], ["show", "--out", "x.txt"], ["eval"], ["train", "--out", "never"]])
def test_unwritable_json_refused_before_any_work(tmp_path, capsys, command) -> None:
    target = tmp_path / "missing" / "rec.json"
    assert main([*command, "--json", str(target)]) == 2
    assert "--json: expected an existing directory" in capsys.readouterr().err
    assert not Path("never").exists()


def test_policy_from_python_file(capsys) -> None:
    args = ["generate", "--prompt", "import os", "--max-new-tokens", "8", "--temperature", "0.7", "--seed", "3"]
    mine = run_json(capsys, *args, "--policy", str(ROOT / "examples" / "my_policy.py"))
    ar = run_json(capsys, *args, "--mode", "ar")
    assert mine["mode"] == "my-ar" and mine["tokens"] == ar["tokens"]


def test_policy_from_json_file_round_trip(tmp_path, capsys) -> None:
    graph = tmp_path / "self_spec.json"
    assert main(["show", "--mode", "self-spec", "--out", str(graph)]) == 0
    args = ["generate", "--prompt", "class A:", "--max-new-tokens", "10"]
    from_file = run_json(capsys, *args, "--policy", str(graph))
    built_in = run_json(capsys, *args, "--mode", "self-spec")
    assert from_file["tokens"] == built_in["tokens"] and from_file["forwards"] == built_in["forwards"]


def test_policy_file_errors_name_file_and_node(tmp_path, capsys) -> None:
    graph = tmp_path / "broken.json"
    assert main(["show", "--mode", "ar", "--opt", "0", "--out", str(graph)]) == 0
    doc = json.loads(graph.read_text())
    node = doc["graph"]["nodes"][3]
    node["op"] = "no_such_op"
    graph.write_text(json.dumps(doc))
    assert main(["generate", "--policy", str(graph), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert str(graph) in err and node["name"] in err and "no_such_op" in err
    bad_py = tmp_path / "nothing.py"
    bad_py.write_text("x = 1\n")
    assert main(["generate", "--policy", str(bad_py), "--prompt", "x"]) == 2
    assert str(bad_py) in capsys.readouterr().err
    raising = tmp_path / "raising.py"
    raising.write_text("from graphrt import Policy\npolicy = Policy('bad', lambda config: 1 / 0)\n")
    assert main(["generate", "--policy", str(raising), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert str(raising) in err and "ZeroDivisionError" in err


@pytest.mark.parametrize("suffix,min_bytes,marker", [
    (".txt", 2000, b"graph "), (".dot", 2000, b"digraph"), (".png", 20000, b"\x89PNG"), (".svg", 20000, b"<svg"),
])
def test_show_writes_a_picture(tmp_path, suffix: str, min_bytes: int, marker: bytes) -> None:
    out = tmp_path / f"self_spec{suffix}"
    assert main(["show", "--mode", "self-spec", "--opt", "1", "--out", str(out)]) == 0
    data = out.read_bytes()
    assert len(data) > min_bytes and marker in data[:4000]
    if suffix in (".txt", ".dot"):
        assert data.count(b"self-spec at O") == 2 if suffix == ".txt" else b"cluster_O1" in data


@pytest.mark.parametrize("mode", ["diffusion", "self-spec"])
@pytest.mark.parametrize("suffix", [".html", ".png"])
def test_generate_trace(tmp_path, capsys, mode: str, suffix: str) -> None:
    out = tmp_path / f"trace{suffix}"
    assert main(["generate", "--mode", mode, "--prompt", "def parse_args(", "--max-new-tokens", "16", "--trace",
                 str(out)]) == 0
    data = out.read_bytes()
    if suffix == ".html":
        text = data.decode()
        assert text.count("<tr>") > 5 and "committed by that forward" in text
        if mode == "self-spec":
            assert "draft input, rejected" in text
    else:
        assert data[:4] == b"\x89PNG" and len(data) > 20000
    assert "trace:" in capsys.readouterr().err


def test_help_has_examples(capsys) -> None:
    for cmd in ("generate", "chat", "show"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "examples:" in capsys.readouterr().out


def test_vs_ar_decodes_the_request_again_with_ar_and_compares(capsys) -> None:
    rec = run_json(capsys, "generate", "--mode", "self-spec-lookup", "--prompt", "import os\nimport sys\n",
                   "--max-new-tokens", "12", "--vs-ar")
    vs = rec["vs_ar"]
    assert vs["identical_to_ar"] is True and vs["ar_tpf"] == 1.0
    assert vs["speedup"] == pytest.approx(vs["tok_per_s"] / vs["ar_tok_per_s"], rel=1e-2)


def test_chat_message_is_a_one_shot_user_turn(tmp_path, capsys) -> None:
    path = write_transformers_checkpoint("llama", tmp_path / "llama", seed=1)
    file = tmp_path / "one.json"
    file.write_text(json.dumps([{"role": "user", "content": "Hello there"}]))
    by_file = run_json(capsys, "chat", "--model", str(path), "--messages", str(file), "--max-new-tokens", "4")
    by_flag = run_json(capsys, "chat", "--model", str(path), "--message", "Hello there", "--max-new-tokens", "4")
    assert by_flag["tokens"] == by_file["tokens"] and by_flag["messages"] == by_file["messages"]
