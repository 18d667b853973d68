"""Checkpoints laid out as real ones: the release format (with its drafter adapter) and
Llama / Qwen2 / Qwen3 written by transformers, each with its own tokenizer and chat template."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import transformers

import graphrt
from graphrt.api import prepare
from graphrt.frontends.models.checkpoint import load_checkpoint
from graphrt.frontends.cli.streaming import stream_generate
from graphrt.frontends.fixtures import write_release_checkpoint, write_transformers_checkpoint

MODES = ("ar", "diffusion", "self-spec", "self-spec-quadratic")
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello! How can I help?"}]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release_checkpoint(tmp_path_factory.mktemp("release") / "nld", seed=3)


@pytest.fixture(scope="module")
def release_model(release):
    return graphrt.load(release, dtype="float32", max_batch=1, max_seq_len=128)


def load_quiet(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # plain AR checkpoints have no mask token
        return graphrt.load(path, max_batch=1, max_seq_len=128, **kw)


def test_release_layout(release) -> None:
    raw = json.loads((release / "config.json").read_text())
    rp = raw["rope_parameters"]
    assert raw["model_type"] == "nemotron_labs_diffusion" and raw["mask_token_id"] == 100
    assert (rp["rope_type"], rp["factor"], rp["original_max_position_embeddings"], rp["beta_fast"],
            rp["beta_slow"], rp["llama_4_scaling_beta"]) == ("yarn", 16.0, 16384, 32.0, 1.0, 0.1)
    assert raw["block_size"] == 4 and raw["dlm_paradigm"] == "block_diff" and isinstance(raw["eos_token_id"], list)
    assert "draft_adapter" not in raw and "qk_norm" not in raw  # only the release's own fields
    index = json.loads((release / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert all(k.startswith(("encoder.", "diffusion_head.")) for k in index["weight_map"])
    acfg = json.loads((release / "drafter" / "adapter_config.json").read_text())
    assert acfg["peft_type"] == "LORA" and acfg["target_modules"] == ["o_proj"] and acfg["r"] == 2
    tok = transformers.AutoTokenizer.from_pretrained(release)
    assert tok.convert_tokens_to_ids("<|mask|>") == 100 and "<think>" in tok.get_vocab()


def test_release_special_ids_from_config_and_tokenizer(release_model) -> None:
    tok = release_model.tokenizer.hf
    assert release_model.config.mask_token_id == 100
    want = {tok.convert_tokens_to_ids("</s>"), tok.convert_tokens_to_ids("<|im_end|>")}
    assert set(release_model.eos_token_ids) == want
    assert release_model.end_think_token_id == tok.convert_tokens_to_ids("</think>")
    assert release_model.adapter is not None and release_model.adapter.endswith("drafter")


def ministral3(path):
    """transformers' Ministral3 with the release checkpoint's weights."""
    raw = json.loads((path / "config.json").read_text())
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings",
            "rope_parameters")
    hc = transformers.Ministral3Config(**{k: raw[k] for k in keys}, sliding_window=None)
    hc._attn_implementation = "eager"
    ref = transformers.Ministral3ForCausalLM(hc).eval()
    _, ours = load_checkpoint(path, dtype=torch.float32)
    sd = {("lm_head.weight" if k == "diffusion_head.weight" else "model." + k.removeprefix("encoder.")): v
          for k, v in ours.state_dict().items()}
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    assert not unexpected and all("rotary" in m for m in missing)
    return ref, ours


def test_release_logits_match_ministral3(release) -> None:
    ref, ours = ministral3(release)
    tokens = torch.randint(0, 401, (1, 8), generator=torch.Generator().manual_seed(1))
    pos = torch.tensor([[0, 1, 2, 16383, 16384, 40000, 100000, 262000]])
    mask = torch.ones(8, 8, dtype=torch.bool).tril()[None]
    with torch.no_grad():
        want = ref(input_ids=tokens, position_ids=pos).logits
        torch.testing.assert_close(ours.forward_dense(tokens, pos, mask), want, rtol=0, atol=1e-4)


def test_release_all_modes_from_chat(release, release_model) -> None:
    ref, _ = ministral3(release)
    ids = release_model.tokenizer.encode_chat(CHAT)
    with torch.no_grad():
        want = ref.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                            pad_token_id=0)[0, len(ids):].tolist()
    outs = {m: graphrt.chat(release_model, CHAT, mode=m, max_new_tokens=10, ignore_eos=True) for m in MODES}
    assert outs["ar"].tokens == want  # AR decoding == transformers' greedy decoding
    assert outs["self-spec"].tokens == want and outs["self-spec-quadratic"].tokens == want
    assert len(outs["diffusion"].tokens) == 10 and outs["diffusion"].forwards >= 1
    for t in (0.0, 0.9):
        runs = [graphrt.chat(release_model, CHAT, mode=m, max_new_tokens=8, temperature=t, seed=5, ignore_eos=True)
                for m in ("ar", "self-spec")]
        assert runs[0].tokens == runs[1].tokens


def drafts(model, mode):
    compiled, ids, params = prepare(model, messages=CHAT, mode=mode, max_new_tokens=12, ignore_eos=True)
    result, trace = stream_generate(model, compiled, ids, params, trace=True)
    verify = [tuple(r.tokens) for r in trace.forwards if any(r.kv_write) and len(r.tokens) > 1][1:]  # past prefill
    return result.tokens, verify


@pytest.mark.parametrize("mode", ["self-spec", "self-spec-quadratic"])
def test_adapter_changes_drafts_not_output(release, release_model, mode: str) -> None:
    plain = load_quiet(release, dtype="float32", adapter=False)
    assert plain.adapter is None
    out_ad, drafts_ad = drafts(release_model, mode)
    out_plain, drafts_plain = drafts(plain, mode)
    assert out_ad == out_plain
    assert drafts_ad != drafts_plain


def test_adapter_other_targets_refused(tmp_path) -> None:
    """An adapter on a module graphrt cannot adapt is refused by name; one whose config names projections it has
    no weights for is refused by the missing tensor."""
    path = write_release_checkpoint(tmp_path / "head", target_modules=("o_proj", "lm_head"))
    with pytest.raises(ValueError, match=r"target_modules': cannot apply a LoRA to module 'lm_head'"):
        graphrt.load(path)
    assert graphrt.load(path, adapter=False).adapter is None
    path = write_release_checkpoint(tmp_path / "qv", target_modules=("q_proj", "v_proj"))
    with pytest.raises(ValueError, match=r"expected tensor 'encoder.layers.0.self_attn.q_proj.lora_A.weight'"):
        graphrt.load(path)


def test_explicit_adapter_directory(release, tmp_path) -> None:
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(release, bare, ignore=shutil.ignore_patterns("drafter"))
    assert load_quiet(bare).adapter is None
    assert load_quiet(bare, adapter=release / "drafter").adapter == str(release / "drafter")


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_transformers_checkpoints_chat_and_logits(tmp_path, kind: str) -> None:
    path = write_transformers_checkpoint(kind, tmp_path / kind, seed=2)
    model = load_quiet(path, dtype="float32")
    ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    ids = model.tokenizer.encode_chat(CHAT)
    assert ids == hf_tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False)
    x = torch.tensor([ids])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, ours = load_checkpoint(path, dtype=torch.float32)
    with torch.no_grad():
        mask = torch.ones(len(ids), len(ids), dtype=torch.bool).tril()[None]
        got = ours.forward_dense(x, torch.arange(len(ids))[None], mask)
        torch.testing.assert_close(got, ref(input_ids=x).logits, rtol=0, atol=1e-4)
        want = ref.generate(x, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(ids):]
    for mode in ("ar", "self-spec-lookup"):
        out = graphrt.chat(model, CHAT, mode=mode, max_new_tokens=8, ignore_eos=True)
        assert out.tokens == want.tolist(), mode
    assert not model.has_mask_token
    with pytest.raises(ValueError, match=r"has no mask token.*ar, prompt-lookup, self-spec-lookup"):
        graphrt.chat(model, CHAT, mode="self-spec", max_new_tokens=8)
    assert set(model.eos_token_ids) >= {hf_tok.eos_token_id}


def test_a_checkpoint_without_a_mask_token_bans_no_token(tmp_path) -> None:
    # Its mask_token_id is a placeholder (vocab_size - 1, a real token here): AR must keep its
    # probability, so the log-probs equal transformers' full softmax (a ban renormalises them).
    path = write_transformers_checkpoint("llama", tmp_path / "llama", seed=3)
    model = load_quiet(path, dtype="float64")
    assert not model.config.has_mask_token and model.config.banned_token_id is None
    ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
    ids = model.tokenizer.encode_chat(CHAT)
    got = graphrt.chat(model, CHAT, mode="ar", max_new_tokens=6, ignore_eos=True, logprobs=True)
    seq = torch.tensor([ids + got.tokens])
    with torch.no_grad():
        logp = torch.log_softmax(ref(input_ids=seq).logits[0, len(ids) - 1:-1], -1)  # [6, V]
    assert got.tokens == logp.argmax(-1).tolist()
    want = logp.gather(1, torch.tensor(got.tokens)[:, None])[:, 0]
    assert logp[:, model.config.mask_token_id].max() > -12  # a ban would move the log-probs beyond the tolerance
    torch.testing.assert_close(torch.tensor([float(x) for x in got.logprobs], dtype=torch.float64), want,
                               rtol=0, atol=1e-6)  # the two float64 forwards differ by ~4e-8


def test_no_chat_template_is_a_clear_error(tmp_path) -> None:
    path = write_transformers_checkpoint("qwen2", tmp_path / "q", chat_template=False)
    model = load_quiet(path)
    with pytest.raises(ValueError, match="has no chat template"):
        graphrt.chat(model, CHAT, max_new_tokens=2)
    assert graphrt.generate(model, "Hello", max_new_tokens=2).text is not None


def test_shipped_model_chat_template() -> None:
    model = graphrt.load(max_batch=1)
    msgs = [{"role": "system", "content": "parse arguments"}, {"role": "user", "content": "def parse_args("}]
    assert model.tokenizer.chat_text(msgs) == "# parse arguments\ndef parse_args("
    a = graphrt.chat(model, msgs, max_new_tokens=4)
    b = graphrt.generate(model, "# parse arguments\ndef parse_args(", max_new_tokens=4)
    assert a.tokens == b.tokens
    with pytest.raises(ValueError, match=r"messages\[0\]: expected"):
        graphrt.chat(model, [{"role": "user"}])


def test_readme_chat_example_runs(release) -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "graphrt.chat(" in b]
    ns: dict = {"graphrt": graphrt}
    exec(block.replace("path/to/checkpoint", str(release)), ns)
    assert ns["out"].tokens and ns["out"].mode == "self-spec"
