"""Loading a checkpoint directory into a :class:`graphrt.Model`."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from graphrt.api import Model

SHIPPED_MODEL = Path(__file__).resolve().parent / "model"
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
               device: str = "cpu", max_batch: int = 8, compile: bool = False, max_seq_len: int | None = None) -> Model:
    """Load ``path`` (default: the shipped model) as a Model with its tokenizer, if it has one.

    ``max_seq_len`` sizes each KV-cache row (default: the model's positions, capped
    at 8192 so a long-context checkpoint does not allocate its full context per row).
    """
    from graphrt.frontends.checkpoint import load_checkpoint
    from graphrt.frontends.transformer import TransformerBackbone

    root = Path(path) if path is not None else SHIPPED_MODEL
    if path is None and not (root / "config.json").is_file():
        raise ValueError(f"no shipped model found at {root}; pass a model directory (--model DIR)")
    if not isinstance(max_batch, int) or max_batch <= 0:
        raise ValueError(f"max_batch: expected an int > 0, found {max_batch!r}")
    dev = resolve_device(device)
    cfg, net = load_checkpoint(root, dtype=parse_dtype(dtype), device=dev)
    capacity = max_seq_len or min(cfg.max_position_embeddings, 8192)
    backbone = TransformerBackbone(net, max_rows=max_batch, row_capacity=capacity, compile=compile)
    tokenizer = None
    if (root / "tokenizer.json").is_file():
        from graphrt.frontends.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_dir(root)
    return Model(backbone, tokenizer, str(root))
