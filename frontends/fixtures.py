"""Tiny random checkpoints laid out exactly as real ones, for tests and demos.

- :func:`write_release_checkpoint`: the Nemotron-Labs-Diffusion release layout
  (``config.json`` of ``model_type`` ``nemotron_labs_diffusion`` with YaRN
  ``rope_parameters`` and ``llama_4_scaling_beta``, sharded safetensors with an
  index, a ChatML tokenizer with ``<think>``/``</think>``, and the drafter as a
  PEFT LoRA adapter directory on ``o_proj``).
- :func:`write_transformers_checkpoint`: a Llama, Qwen2 or Qwen3 directory written
  by ``transformers`` itself (``save_pretrained``), with a tokenizer and chat
  template in that family's style.
- :func:`tiny_tokenizer`: a small byte-level BPE with given special tokens and a
  chat template, wrapped in ``PreTrainedTokenizerFast`` (what ``AutoTokenizer``
  reads back).

``graphrt.testing`` re-exports these, so tests outside this repository can use them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .models.checkpoint import init_random_, save_checkpoint
from .models.config import ModelConfig
from .models.transformer import Transformer

CORPUS = ["def parse_args(argv):\n    return argv\n", "import os\nimport sys\n", "class A:\n    pass\n",
          "The quick brown fox jumps over the lazy dog.\n", "Hello! How can I help you today?\n",
          "for i in range(10):\n    print(i)\n"] * 8

CHATML_THINK_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for m in messages -%}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and not enable_thinking -%}{{- '<think></think>' -}}{%- endif -%}"
    "{%- endif -%}")
LLAMA3_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for m in messages -%}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}")
CHATML_TEMPLATE = (
    "{%- for m in messages -%}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")

RELEASE_MASK_TOKEN_ID = 100  # as in the released checkpoints
RELEASE_SPECIALS = (["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
                    + [f"<|reserved_{i}|>" for i in range(8, RELEASE_MASK_TOKEN_ID)] + ["<|mask|>"])
# family -> (special tokens in id order, chat template, bos, eos, pad)
FAMILIES: dict[str, tuple[list[str], str, str | None, str, str]] = {
    "llama": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
              LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>"),
    "qwen2": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], CHATML_TEMPLATE, None, "<|im_end|>", "<|endoftext|>"),
    "qwen3": (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"], CHATML_TEMPLATE, None,
              "<|im_end|>", "<|endoftext|>"),
}


def tiny_tokenizer(special_tokens: list[str], chat_template: str | None, bos: str | None, eos: str,
                   pad: str | None = None, mask: str | None = None, vocab_size: int = 400) -> Any:
    """A small byte-level BPE as a ``transformers.PreTrainedTokenizerFast``.

    Parameters
    ----------
    special_tokens:
        Special tokens, given ids ``0..len-1`` in this order.
    chat_template:
        Jinja chat template (``None``: the tokenizer has none).
    bos, eos, pad, mask:
        Which special tokens play these roles (each must be in ``special_tokens``).
    vocab_size:
        Target size (the byte alphabet and the special tokens always fit).

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        Save it with ``save_pretrained(dir)``.
    """
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    for role, tok in (("bos", bos), ("eos", eos), ("pad", pad), ("mask", mask)):
        if tok is not None and tok not in special_tokens:
            raise ValueError(f"tiny_tokenizer: {role} token {tok!r} expected among special_tokens, found it missing")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=max(vocab_size, len(special_tokens) + 300), special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    roles = {k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("pad_token", pad), ("mask_token", mask))
             if v is not None}
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, **roles)
    tok.chat_template = chat_template
    return tok


def _tiny_config(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    base = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5)
    base.update(overrides)
    return base


def write_release_checkpoint(path: str | os.PathLike[str], seed: int = 0, dtype: torch.dtype = torch.float32,
                             block_size: int = 4, adapter_rank: int = 2, adapter_alpha: float = 8.0,
                             adapter_dir: str = "drafter", target_modules: tuple[str, ...] = ("o_proj",),
                             chat_template: bool = True) -> Path:
    """Write a tiny random checkpoint in the Nemotron-Labs-Diffusion release layout.

    Parameters
    ----------
    path:
        Target directory.
    seed:
        Weight seed.
    dtype:
        Stored dtype (float32 so logits can be compared within 1e-4).
    block_size:
        ``config.json``'s ``block_size``.
    adapter_rank, adapter_alpha:
        The drafter LoRA's ``r`` and ``lora_alpha``.
    adapter_dir:
        Name of the adapter subdirectory (``""``: write no adapter).
    target_modules:
        ``target_modules`` of ``adapter_config.json`` (the release: ``o_proj``; others
        write a config the loader must refuse).
    chat_template:
        Give the tokenizer the release's ChatML-with-thinking template.

    Returns
    -------
    Path
        ``path``: ``config.json``, ``model-0000k-of-0000n.safetensors`` +
        ``model.safetensors.index.json``, ``tokenizer.json`` + ``tokenizer_config.json``,
        and ``<adapter_dir>/adapter_config.json`` + ``adapter_model.safetensors``.
    """
    root = Path(path)
    tok = tiny_tokenizer(RELEASE_SPECIALS, CHATML_THINK_TEMPLATE if chat_template else None, bos="<s>",
                         eos="<|im_end|>", pad="<pad>", mask="<|mask|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<s>", "</s>", "<|im_end|>", "<pad>", "<|mask|>")}
    assert ids["<|mask|>"] == RELEASE_MASK_TOKEN_ID, ids
    rope = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0, "original_max_position_embeddings": 16384,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1}
    raw = {"architectures": ["NemotronLabsDiffusionModel"], "model_type": "nemotron_labs_diffusion",
           **_tiny_config(len(tok)), "rope_parameters": rope, "max_position_embeddings": 16384 * 16,
           "tie_word_embeddings": False, "bos_token_id": ids["<s>"], "eos_token_id": [ids["</s>"], ids["<|im_end|>"]],
           "pad_token_id": ids["<pad>"], "mask_token_id": RELEASE_MASK_TOKEN_ID, "block_size": block_size,
           "dlm_paradigm": "block_diff", "torch_dtype": str(dtype).removeprefix("torch.")}
    config = ModelConfig.from_dict(raw, "write_release_checkpoint")
    model = init_random_(Transformer(config).to(torch.float64), seed)
    save_checkpoint(model, config, root, dtype=dtype, max_shard_bytes=sum(
        p.numel() for p in model.parameters()) * dtype.itemsize // 3 + 1)
    (root / "config.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")  # the release's fields only
    tok.save_pretrained(str(root))
    if adapter_dir:
        _write_adapter(root / adapter_dir, config, seed + 1, adapter_rank, adapter_alpha, target_modules, dtype)
    return root


def _write_adapter(out: Path, config: ModelConfig, seed: int, rank: int, alpha: float,
                   target_modules: tuple[str, ...], dtype: torch.dtype) -> None:
    """A PEFT LoRA adapter directory on ``o_proj`` (``base_model.model.<module>.lora_{A,B}.weight``)."""
    cfg = ModelConfig(**{**config.__dict__, "draft_adapter": {"rank": rank, "alpha": alpha}})
    lora = {n: t for n, t in init_random_(Transformer(cfg).to(torch.float64), seed).state_dict().items()
            if ".lora_" in n}
    out.mkdir(parents=True, exist_ok=True)
    save_file({f"base_model.model.{n}": t.to(dtype).contiguous() for n, t in lora.items()},
              str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    acfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "..", "r": rank,
            "lora_alpha": alpha, "lora_dropout": 0.0, "target_modules": list(target_modules), "bias": "none",
            "fan_in_fan_out": False, "inference_mode": True, "use_rslora": False, "use_dora": False,
            "modules_to_save": None}
    (out / "adapter_config.json").write_text(json.dumps(acfg, indent=2) + "\n", encoding="utf-8")


def write_transformers_checkpoint(kind: str, path: str | os.PathLike[str], seed: int = 0,
                                  chat_template: bool = True) -> Path:
    """A tiny random ``llama`` / ``qwen2`` / ``qwen3`` checkpoint written by ``transformers`` itself.

    Parameters
    ----------
    kind:
        ``llama``, ``qwen2`` or ``qwen3``.
    path:
        Target directory (``save_pretrained`` of the model and of its tokenizer).
    seed:
        ``torch.manual_seed`` for the random weights.
    chat_template:
        Give the tokenizer that family's chat template.

    Returns
    -------
    Path
        ``path``.
    """
    import transformers

    if kind not in FAMILIES:
        raise ValueError(f"write_transformers_checkpoint: kind expected one of {sorted(FAMILIES)}, found {kind!r}")
    specials, template, bos, eos, pad = FAMILIES[kind]
    tok = tiny_tokenizer(specials, template if chat_template else None, bos=bos, eos=eos, pad=pad)
    ids = {k: (tok.convert_tokens_to_ids(v) if v else None) for k, v in (("bos", bos), ("eos", eos), ("pad", pad))}
    common = dict(**_tiny_config(len(tok)), max_position_embeddings=256, tie_word_embeddings=kind == "qwen3",
                  bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
    classes = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
               "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {"use_sliding_window": False}),
               "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {"use_sliding_window": False})}
    cfg_cls, model_cls, extra = classes[kind]
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**common, **extra)).eval()
    with torch.no_grad():  # transformers initialises norms to 1 and biases to 0: make them matter
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    root = Path(path)
    transformers.utils.logging.disable_progress_bar()
    model.save_pretrained(str(root))
    tok.save_pretrained(str(root))
    return root


__all__ = ["tiny_tokenizer", "write_release_checkpoint", "write_transformers_checkpoint", "RELEASE_MASK_TOKEN_ID",
           "CHATML_THINK_TEMPLATE"]
