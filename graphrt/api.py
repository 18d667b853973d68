"""The top-level API: ``load``, ``compile``, ``generate``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

import importlib

from graphrt.backbone import Backbone
from graphrt.compiled import CompiledPolicy, compile_policy
from graphrt.params import GenerationParams, GenerationResult
from graphrt.policy import Policy
from graphrt.session import Session, TokenizerLike


@dataclass
class Model:
    """A backbone with its tokenizer (optional) and where it came from."""

    backbone: Backbone
    tokenizer: TokenizerLike | None = None
    path: str = ""

    @property
    def config(self) -> Any:
        """The backbone's :class:`~graphrt.backbone.BackboneConfig`."""
        return self.backbone.config


def load(path: str | os.PathLike[str] | None = None, dtype: torch.dtype | str | None = None, device: str = "cpu",
         max_batch: int = 8, compile: bool = False, max_seq_len: int | None = None) -> Model:
    """Load a checkpoint directory (DESIGN.md's format) as a :class:`Model`.

    Parameters
    ----------
    path:
        Model directory; ``None`` loads the model shipped with graphrt.
    dtype:
        ``float32``, ``float64``, ``bfloat16``, ``float16`` (name or torch dtype);
        default: as stored.
    device:
        ``cpu`` or ``cuda`` (a clear error when CUDA is asked for without a GPU).
    max_batch:
        Cache rows, i.e. requests that can be active at once.
    compile:
        Run the backbone under ``torch.compile``.
    max_seq_len:
        KV-cache slots per request (default: the model's positions, at most 8192).
    """
    loader = _frontend("loader")  # the core never imports frontends at module level
    return loader.load_model(path, dtype=dtype, device=device, max_batch=max_batch, compile=compile,
                      max_seq_len=max_seq_len)


def _frontend(name: str) -> Any:
    """``graphrt.frontends.<name>``, imported on first use."""
    return importlib.import_module(f"graphrt.frontends.{name}")


def compile(policy: Policy | str, model: Model | Backbone, opt_level: int = 1, **policy_args: Any) -> CompiledPolicy:
    """Build, verify and optimise a policy (or a mode name) for a model."""
    if isinstance(policy, str):
        policy = _frontend("policies").policy_for_mode(policy, **policy_args)
    elif policy_args:
        raise ValueError(f"compile: policy arguments {sorted(policy_args)} apply to mode names only")
    backbone = model.backbone if isinstance(model, Model) else model
    return compile_policy(policy, backbone.config, opt_level)


def generate(model: Model, prompt: str | Sequence[int] | torch.Tensor, mode: str | Policy | CompiledPolicy = "ar",
             block_length: int | None = None, threshold: float | None = None, opt_level: int = 1,
             **params: Any) -> GenerationResult:
    """Generate for one prompt (a session with one request).

    ``prompt`` is text (needs the model's tokenizer) or token ids. ``params`` are
    :class:`~graphrt.params.GenerationParams` fields (``max_new_tokens``,
    ``temperature``, ``seed``, ...).
    """
    compiled = mode if isinstance(mode, CompiledPolicy) else compile(
        mode, model, opt_level, **({} if isinstance(mode, Policy) else
                                   {"block_length": block_length, "threshold": threshold}))
    if isinstance(prompt, str):
        if model.tokenizer is None:
            raise ValueError("generate: a text prompt needs a tokenizer; pass token ids or load a model with one")
        prompt = model.tokenizer.encode(prompt)  # type: ignore[attr-defined]
    session = Session(model.backbone, model.tokenizer)
    rid = session.add(compiled, prompt, GenerationParams(**params))
    return session.run()[rid]
