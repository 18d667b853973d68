"""Checkpoint I/O: round trips, sharding, and a clear ValueError for every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from graphrt.frontends.models import checkpoint as ck
from graphrt.frontends.models.checkpoint import init_random_, load_checkpoint, random_checkpoint, save_adapter, save_checkpoint
from graphrt.frontends.models.config import ModelConfig, default_test_config
from graphrt.frontends.models.transformer import Transformer


def small_model(**overrides) -> tuple[ModelConfig, Transformer]:
    cfg = default_test_config(**overrides)
    return cfg, init_random_(Transformer(cfg), seed=0)


def assert_same(a: Transformer, b: Transformer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    cfg, model = small_model()
    return save_checkpoint(model, cfg, tmp_path / "ck")


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("overrides", [
    {},
    {"tie_word_embeddings": True, "draft_adapter": {"rank": 2, "alpha": 4.0}, "qk_norm": True,
     "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                         "llama_4_scaling_beta": 0.1}},
])
def test_round_trip_exact(tmp_path: Path, overrides: dict) -> None:
    cfg, model = small_model(**overrides)
    save_checkpoint(model, cfg, tmp_path / "ck")
    cfg2, model2 = load_checkpoint(tmp_path / "ck")
    assert cfg2 == cfg
    assert_same(model, model2)
    if cfg.tie_word_embeddings:
        assert model2.diffusion_head.weight is model2.encoder.embed_tokens.weight
        assert "diffusion_head.weight" not in load_file(tmp_path / "ck" / "model.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_dtype_and_sharded(tmp_path: Path) -> None:
    cfg, model = small_model()
    save_checkpoint(model, cfg, tmp_path / "ck", dtype=torch.bfloat16, max_shard_bytes=8000)
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert "model.safetensors.index.json" in names and len([n for n in names if n.startswith("model-")]) > 2
    _, m16 = load_checkpoint(tmp_path / "ck")
    assert m16.encoder.embed_tokens.weight.dtype == torch.bfloat16
    _, m32 = load_checkpoint(tmp_path / "ck", dtype=torch.float32)
    torch.testing.assert_close(m32.encoder.embed_tokens.weight, model.encoder.embed_tokens.weight, rtol=1e-2, atol=0)


def test_random_checkpoint_and_overwrite_keeps_other_files(tmp_path: Path) -> None:
    root = random_checkpoint(tmp_path / "ck", seed=3)
    (root / "tokenizer.json").write_text("{}")
    cfg, model = small_model()
    save_checkpoint(model, cfg, root)
    assert (root / "tokenizer.json").read_text() == "{}"
    assert_same(load_checkpoint(root)[1], model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_failed_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, model = small_model()
    save_checkpoint(model, cfg, tmp_path / "ck")
    before = (tmp_path / "ck" / "model.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    _, other = small_model()
    init_random_(other, seed=9)
    for target in ("ck", "new"):
        with pytest.raises(OSError, match="disk full"):
            save_checkpoint(other, cfg, tmp_path / target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert (tmp_path / "ck" / "model.safetensors").read_bytes() == before


# ----------------------------------------------------------------------------- bad inputs
def edit_config(root: Path, **changes) -> None:
    d = json.loads((root / "config.json").read_text())
    d.update(changes)
    (root / "config.json").write_text(json.dumps(d))


def edit_weights(root: Path, fn) -> None:
    sd = load_file(root / "model.safetensors")
    fn(sd)
    save_file(sd, root / "model.safetensors")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"expected a directory holding config.json .* found nothing at .*nope"):
        load_checkpoint(tmp_path / "nope")


def test_missing_config(saved: Path) -> None:
    (saved / "config.json").unlink()
    with pytest.raises(ValueError, match=r"expected config.json in .*ck, found none"):
        load_checkpoint(saved)


def test_corrupt_config(saved: Path) -> None:
    (saved / "config.json").write_text('{"vocab_size": 96,')
    with pytest.raises(ValueError, match=r"config.json: expected valid JSON, found a corrupt file"):
        load_checkpoint(saved)


def test_wrong_model_type(saved: Path) -> None:
    edit_config(saved, model_type="gpt2")
    with pytest.raises(ValueError, match=r"config.json: field 'model_type': expected 'nemotron_labs_diffusion' .* "
                                         r"found 'gpt2'"):
        load_checkpoint(saved)


def test_bad_field(saved: Path) -> None:
    edit_config(saved, hidden_size="32")
    with pytest.raises(ValueError, match=r"config.json: field 'hidden_size': expected int, found '32' \(str\)"):
        load_checkpoint(saved)
    edit_config(saved, hidden_size=32, num_key_value_heads=3)
    with pytest.raises(ValueError, match=r"field 'num_key_value_heads': expected a divisor of num_attention_heads=4, "
                                         r"found 3"):
        load_checkpoint(saved)
    d = json.loads((saved / "config.json").read_text())
    del d["vocab_size"]
    (saved / "config.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"config.json: missing required field 'vocab_size' \(expected int\)"):
        load_checkpoint(saved)


def test_missing_weights(saved: Path) -> None:
    (saved / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"expected weights model.safetensors or model.safetensors.index.json in "
                                         r".*ck, found neither"):
        load_checkpoint(saved)


def test_missing_tensor(saved: Path) -> None:
    edit_weights(saved, lambda sd: sd.pop("encoder.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"model.safetensors: expected tensor 'encoder.layers.1.mlp.up_proj.weight', "
                                         r"found it missing"):
        load_checkpoint(saved)


def test_unexpected_tensor(saved: Path) -> None:
    edit_weights(saved, lambda sd: sd.__setitem__("encoder.layers.2.mlp.up_proj.weight", torch.zeros(2)))
    with pytest.raises(ValueError, match=r"unexpected tensor 'encoder.layers.2.mlp.up_proj.weight'"):
        load_checkpoint(saved)


def test_wrong_shape(saved: Path) -> None:
    edit_weights(saved, lambda sd: sd.__setitem__("encoder.norm.weight", torch.ones(31)))
    with pytest.raises(ValueError, match=r"model.safetensors: tensor 'encoder.norm.weight': expected shape \[32\], "
                                         r"found \[31\]"):
        load_checkpoint(saved)


def test_corrupt_safetensors(saved: Path) -> None:
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[:100])
    with pytest.raises(ValueError, match=r"model.safetensors: expected a valid safetensors file, found a corrupt one"):
        load_checkpoint(saved)


def test_missing_shard(tmp_path: Path) -> None:
    cfg, model = small_model()
    root = save_checkpoint(model, cfg, tmp_path / "ck", max_shard_bytes=8000)
    shard = sorted(root.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ValueError, match=rf"index.json: shard '{shard.name}' listed in weight_map, expected at "):
        load_checkpoint(root)


def test_peft_adapter(tmp_path: Path) -> None:
    cfg, model = small_model(draft_adapter={"rank": 2, "alpha": 8.0})
    base_cfg = default_test_config()
    base = Transformer(base_cfg)
    base.load_state_dict({k: v for k, v in model.state_dict().items() if "lora" not in k})
    save_checkpoint(base, base_cfg, tmp_path / "base")
    ad = tmp_path / "adapter"
    ad.mkdir()
    (ad / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 8, "target_modules": ["o_proj"]}))
    lora = {"base_model.model.model." + k[len("encoder."):]: v for k, v in model.state_dict().items() if "lora" in k}
    save_file(lora, ad / "adapter_model.safetensors")
    cfg2, loaded = load_checkpoint(tmp_path / "base", adapter=ad)
    assert cfg2.draft_adapter == {"rank": 2, "alpha": 8.0, "target_modules": ["o_proj"]}
    assert_same(loaded, model)
    (ad / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 8, "target_modules": ["q_proj", "o_proj"]}))
    with pytest.raises(ValueError, match=r"expected tensor 'encoder.layers.0.self_attn.q_proj.lora_A.weight', "
                                         r"found it missing"):
        load_checkpoint(tmp_path / "base", adapter=ad)
    (ad / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 8, "target_modules": ["o_proj", "lm_head"]}))
    with pytest.raises(ValueError, match=r"adapter_config.json: field 'target_modules': cannot apply a LoRA to "
                                         r"module 'lm_head'"):
        load_checkpoint(tmp_path / "base", adapter=ad)


def test_adapter_on_every_projection_with_mask_embedding_round_trips(tmp_path: Path) -> None:
    """What the drafter trainer writes (LoRA on every projection, the mask token's input embedding)
    loads back equal, and leaves every token that is not a draft token on the base weights."""
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cfg, model = small_model(draft_adapter={"rank": 2, "alpha": 4.0, "target_modules": targets,
                                            "mask_embedding": True})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or name == "encoder.mask_embedding":
                p.normal_()  # PEFT initialises B to zero: make the adapter do something
    base_cfg = default_test_config()
    base = Transformer(base_cfg)
    base.load_state_dict({k: v for k, v in model.state_dict().items()
                          if "lora" not in k and k != "encoder.mask_embedding"})
    save_checkpoint(base, base_cfg, tmp_path / "base")
    save_adapter(model, tmp_path / "base" / "drafter")
    cfg2, loaded = load_checkpoint(tmp_path / "base", adapter=tmp_path / "base" / "drafter")
    assert cfg2.adapter_targets == tuple(targets) and cfg2.draft_adapter["mask_embedding"]
    assert cfg2.mask_token_id == cfg.mask_token_id
    assert_same(loaded, model)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (2, 6), generator=g)
    tokens[:, 3:] = cfg.mask_token_id
    pos = torch.arange(6).expand(2, 6)
    mask = torch.ones(6, 6, dtype=torch.bool).tril().expand(2, 6, 6)
    with torch.no_grad():
        off = loaded.forward_dense(tokens[:, :3], pos[:, :3], mask[:, :3, :3], torch.zeros(2, 3, dtype=torch.bool))
        assert torch.equal(off, base.forward_dense(tokens[:, :3], pos[:, :3], mask[:, :3, :3]))
        on = loaded.forward_dense(tokens, pos, mask, tokens == cfg.mask_token_id)
        assert not torch.allclose(on[:, 3:], base.forward_dense(tokens, pos, mask)[:, 3:])
