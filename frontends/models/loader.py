"""Loading a checkpoint directory into a :class:`graphrt.Model`."""

from __future__ import annotations

import dataclasses

import json
import os
from pathlib import Path
from typing import Any

import torch

from graphrt.api import Model
from graphrt.frontends.models import gguf, named_models

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "model"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype from a name (``float32``, ``bf16``, ...) or ``None``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, found {dtype!r}")
    return DTYPES[dtype]


def resolve_device(device: str) -> torch.device:
    """``torch.device`` for a name; a clear error when CUDA is asked for without a GPU."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: '{device}' requested, but no CUDA device is available on this machine")
    return dev


def load_model(path: str | os.PathLike[str] | None = None, dtype: torch.dtype | str | None = None,
               device: str = "cpu", max_batch: int = 8, compile: bool | str = False, max_seq_len: int | None = None,
               adapter: str | os.PathLike[str] | bool | None = None, tp: int = 1, tp_check: bool = False,
               linear: str = "auto") -> Model:
    """Load ``path`` (default: the shipped model) as a Model with its tokenizer, if it has one.

    ``path`` is a checkpoint directory, a Llama GGUF file (converted once into the
    cache, see :mod:`graphrt.frontends.models.gguf`; default dtype float32), or a
    model name from :data:`graphrt.frontends.models.named_models.NAMED_MODELS`
    (``smollm2``); an existing path wins over a name.

    ``max_seq_len`` sizes each KV-cache row (default: the model's positions, capped
    at 8192 so a long-context checkpoint does not allocate its full context per row).
    ``adapter``: a PEFT LoRA directory for self-speculation drafts; ``None`` uses the
    one the checkpoint ships (a subdirectory holding ``adapter_config.json``), if any;
    ``False`` loads none. The tokenizer is read by ``transformers.AutoTokenizer``; the
    EOS ids are the config's ``eos_token_id`` (an int or a list) plus the tokenizer's
    EOS, the end-of-thinking id the tokenizer's ``</think>`` token.
    ``tp > 1`` loads this rank's shard of a tensor-parallel model (one process per
    rank, launched by ``torchrun``; see :mod:`graphrt.frontends.models.tensor_parallel`),
    ``tp_check`` compares every forward's inputs across the ranks.
    ``linear``: the backbone's linear-layer path, ``"auto"`` (weights prepacked for the blocked product, float32
    on the CPU when not compiled, else ``F.linear``), ``"packed"`` or ``"eager"``; see
    :class:`~graphrt.frontends.models.transformer.TransformerBackbone`.
    """
    from graphrt.frontends.models.checkpoint import find_adapter, load_checkpoint
    from graphrt.frontends.models.tokenizer import has_tokenizer, load_tokenizer
    from graphrt.frontends.models.transformer import TransformerBackbone

    root = Path(path) if path is not None else SHIPPED_MODEL
    if path is None and not (root / "config.json").is_file():
        raise ValueError(f"no shipped model found at {root}; pass a model directory (--model DIR)")
    if not isinstance(max_batch, int) or max_batch <= 0:
        raise ValueError(f"max_batch: expected an int > 0, found {max_batch!r}")
    source, root, entry, has_mask = _model_source(root, dtype)
    named = str(path) if entry is not None else None
    if dtype is None and source != root:
        dtype = gguf.DEFAULT_DTYPE
    adapter_dir = find_adapter(root) if adapter is None or adapter is True else (adapter or None)
    if named is not None and adapter_dir is None and (adapter is None or adapter is True):
        adapter_dir = named_models.named_model_adapter(named)
    if adapter is True and adapter_dir is None:
        raise ValueError(f"adapter: expected a subdirectory of {root} holding adapter_config.json, found none")
    if tp == 1:
        cfg, net = load_checkpoint(root, dtype=parse_dtype(dtype), device=resolve_device(device), adapter=adapter_dir)
    else:
        from graphrt.frontends.models import tensor_parallel

        mesh, dev = tensor_parallel.init_tensor_parallel(tp, device)
        cfg, net = tensor_parallel.load_sharded_transformer(root, mesh, dtype=parse_dtype(dtype), device=dev,
                                                            adapter=adapter_dir)
    named_models.apply_entry(entry, cfg, str(named))
    has_mask = has_mask or bool((cfg.draft_adapter or {}).get("mask_embedding"))  # the adapter brings one
    capacity = max_seq_len or min(cfg.max_position_embeddings, 8192)
    if tp == 1:
        backbone = TransformerBackbone(net, max_rows=max_batch, row_capacity=capacity, compile=compile,
                                       linear=linear)
    else:
        if linear not in ("auto", "eager"):
            raise ValueError(f"linear: expected 'auto' or 'eager' with tp={tp} (sharded weights run F.linear), "
                             f"found {linear!r}")
        backbone = tensor_parallel.TensorParallelBackbone(net, mesh, check=tp_check, max_rows=max_batch,
                                                          row_capacity=capacity, compile=compile)
    backbone.config = dataclasses.replace(backbone.config, has_mask_token=has_mask)
    tokenizer = load_tokenizer(root) if has_tokenizer(root) else None
    eos = cfg.eos_token_id if isinstance(cfg.eos_token_id, list) else [cfg.eos_token_id]
    if tokenizer is not None:
        eos.append(tokenizer.eos_token_id)
    eos_ids = tuple(dict.fromkeys(int(e) for e in eos if e is not None))
    end_think = tokenizer.end_think_token_id if tokenizer is not None else None
    return Model(backbone, tokenizer, str(source), eos_token_ids=eos_ids, end_think_token_id=end_think,
                 adapter=str(adapter_dir) if adapter_dir is not None else None)


def read_model_config(path: str | os.PathLike[str] | None = None) -> Any:
    """The :class:`~graphrt.frontends.models.config.ModelConfig` of what :func:`load_model` would load from ``path``,
    without loading weights: a directory's ``config.json``, a GGUF file's metadata (nothing is converted), a
    named model's file with its table entry's mask token."""
    from graphrt.frontends.models.checkpoint import read_config

    root, entry = named_models.resolve(path if path is not None else SHIPPED_MODEL)
    if not gguf.is_gguf_path(root):
        return read_config(root)[0]
    config = gguf.read_gguf_config(gguf.open_gguf(root), root)
    named_models.apply_entry(entry, config, str(path))
    return config


def _model_source(path: Path, dtype: torch.dtype | str | None,
                  ) -> tuple[Path, Path, named_models.NamedModel | None, bool]:
    """What ``path`` names: (the file or directory named, the checkpoint directory to read, the named model's
    table entry if it is one, whether the checkpoint itself has a mask token).

    A GGUF file (named or not) is read through its converted cache entry and has no mask
    token of its own (a drafter adapter can bring one). A directory has one when its
    ``config.json`` is a tri-mode config or gives ``mask_token_id``.
    """
    path, entry = named_models.resolve(path)
    if gguf.is_gguf_path(path):
        return path, gguf.cached_checkpoint(path, parse_dtype(dtype) or gguf.DEFAULT_DTYPE), entry, False
    return path, path, entry, _declares_mask_token(path)


def _declares_mask_token(root: Path) -> bool:
    """Whether checkpoint directory ``root`` has a mask token (not a placeholder the AR mapping picked)."""
    from graphrt.frontends.models.checkpoint import AR_MODEL_TYPES

    try:
        raw = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # the checkpoint reader reports what is wrong with the file
    if not isinstance(raw, dict):
        return True
    return raw.get("model_type") not in AR_MODEL_TYPES or raw.get("mask_token_id") is not None
