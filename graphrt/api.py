"""The top-level API: ``load``, ``compile``, ``generate``, ``chat``.

Mode names and the checkpoint loader are looked up in :mod:`graphrt.modes`, which
the frontends fill as a plugin; this module imports no frontend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from graphrt.backbone import Backbone
from graphrt.compiled import CompiledPolicy, compile_policy
from graphrt.modes import check_mode, get_loader, get_mode
from graphrt.params import GenerationParams, GenerationResult
from graphrt.policy import Policy
from graphrt.session import Session, TokenizerLike


@dataclass
class Model:
    """A backbone with its tokenizer (optional), where it came from and its special ids.

    Attributes
    ----------
    eos_token_ids:
        Every id that ends a reply (the config's ``eos_token_id`` list and the
        tokenizer's EOS); ``generate`` stops at any of them unless ``ignore_eos``.
    end_think_token_id:
        The end-of-thinking id (the tokenizer's ``</think>``), the default of a
        thinking budget's forced token.
    adapter:
        The draft adapter directory loaded, if any.
    """

    backbone: Backbone
    tokenizer: TokenizerLike | None = None
    path: str = ""
    eos_token_ids: tuple[int, ...] = ()
    end_think_token_id: int | None = None
    adapter: str | None = None

    @property
    def has_mask_token(self) -> bool:
        """Whether the checkpoint has a mask token (a model trained to fill masked slots, or a drafter adapter
        that brings one); without one ``config.mask_token_id`` is a placeholder no mode bans, and the modes
        that draft with masks are refused by name (``config.has_mask_token``)."""
        return self.backbone.config.has_mask_token

    @property
    def config(self) -> Any:
        """The backbone's :class:`~graphrt.backbone.BackboneConfig`."""
        return self.backbone.config


def load(path: str | os.PathLike[str] | None = None, dtype: torch.dtype | str | None = None, device: str = "cpu",
         max_batch: int = 8, compile: bool | str = False, max_seq_len: int | None = None,
         adapter: str | os.PathLike[str] | bool | None = None, tp: int = 1, tp_check: bool = False,
         linear: str = "auto") -> Model:
    """Load a checkpoint directory (the formats of ``docs/design.md``) as a :class:`Model`.

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
        Run the backbone under ``torch.compile`` at static shape buckets: ``True`` compiles
        each bucket on its first call, ``"freeze"`` likewise with weight freezing,
        ``"background"`` on a worker thread while that bucket's calls run eagerly (what
        a server wants); ``False`` runs eagerly.
    max_seq_len:
        KV-cache slots per request (default: the model's positions, at most 8192).
    adapter:
        PEFT LoRA directory (``o_proj``) applied in self-speculation drafts; ``None``
        (default) uses the adapter directory the checkpoint ships, if any; ``False``
        loads none.
    tp:
        Tensor-parallel degree: ``tp > 1`` loads this rank's shard (run on every rank
        of ``torchrun --nproc-per-node tp``; gloo on ``cpu``, NCCL on ``cuda``).
    tp_check:
        Debug: compare every forward's inputs across the tensor-parallel ranks.
    linear:
        The backbone's linear layers: ``"auto"`` (default) prepacks the weights once in blocks for the
        blocked product (q/k/v and gate/up fused; :mod:`graphrt.frontends.models.blocked_gemm`) for float32 on the CPU when not compiled, and runs ``F.linear``
        otherwise; ``"eager"`` always runs ``F.linear`` on the stored weights; ``"packed"``
        insists on prepacking (an error where it does not apply). Packed logits equal eager
        ones up to float32 rounding.
    """
    return get_loader()(path, dtype=dtype, device=device, max_batch=max_batch, compile=compile,
                        max_seq_len=max_seq_len, adapter=adapter, tp=tp, tp_check=tp_check, linear=linear)


def compile(policy: Policy | str, model: Model | Backbone, opt_level: int = 1, **policy_args: Any) -> CompiledPolicy:
    """Build, verify and optimise a policy (or a mode name) for a model.

    A mode that drafts with mask tokens is refused for a :class:`Model` without a
    mask token, with the lossless modes that need no drafter suggested instead.
    """
    if isinstance(policy, str):  # a mode name: the mode registry (graphrt.modes), filled by the frontends
        check_mode(policy, model)
        policy = get_mode(policy)(**policy_args)
    elif policy_args:
        raise ValueError(f"compile: policy arguments {sorted(policy_args)} apply to mode names only")
    backbone = model.backbone if isinstance(model, Model) else model
    return compile_policy(policy, backbone.config, opt_level)


def prepare(model: Model, prompt: str | Sequence[int] | torch.Tensor | None = None,
            messages: Sequence[Mapping[str, str]] | None = None, mode: str | Policy | CompiledPolicy = "ar",
            block_length: int | None = None, threshold: float | None = None, opt_level: int = 1,
            chat_template_args: Mapping[str, Any] | None = None,
            **params: Any) -> tuple[CompiledPolicy, list[int], GenerationParams]:
    """What :func:`generate` runs: the compiled policy, the prompt ids and the parameters.

    Engines and the command line use it to drive a :class:`Session` themselves.
    The model's EOS ids become stop ids (unless ``ignore_eos``), and a
    ``thinking_budget`` without ``end_think_token_id`` forces the model's
    end-of-thinking token.
    """
    compiled = mode if isinstance(mode, CompiledPolicy) else compile(
        mode, model, opt_level, **({} if isinstance(mode, Policy) else
                                   {"block_length": block_length, "threshold": threshold}))
    ids = _prompt_ids(model, prompt, messages, chat_template_args or {})
    if not params.get("ignore_eos"):
        params["stop_token_ids"] = tuple(params.get("stop_token_ids", ())) + model.eos_token_ids
    if params.get("thinking_budget") is not None and params.get("end_think_token_id") is None:
        if model.end_think_token_id is None:
            where = model.path or "the model"
            raise ValueError(f"thinking_budget: needs end_think_token_id, and the tokenizer of {where} has no "
                             f"'</think>' token to default to; pass end_think_token_id")
        params["end_think_token_id"] = model.end_think_token_id
    return compiled, ids, GenerationParams(**params)


def _prompt_ids(model: Model, prompt: str | Sequence[int] | torch.Tensor | None,
                messages: Sequence[Mapping[str, str]] | None, template_args: Mapping[str, Any]) -> list[int]:
    if (prompt is None) == (messages is None):
        raise ValueError("generate: expected exactly one of prompt= and messages=, found "
                         + ("both" if prompt is not None else "neither"))
    if messages is not None or isinstance(prompt, str):
        if model.tokenizer is None:
            where = model.path or "the model"
            raise ValueError(f"generate: a text prompt needs a tokenizer (so do messages); {where} has none "
                             f"(pass token ids)")
        if messages is not None:
            return model.tokenizer.encode_chat(messages, **template_args)  # type: ignore[attr-defined]
        return model.tokenizer.encode(prompt)  # type: ignore[attr-defined]
    return torch.as_tensor(prompt, dtype=torch.int64).flatten().tolist()


def generate(model: Model, prompt: str | Sequence[int] | torch.Tensor | None = None,
             mode: str | Policy | CompiledPolicy = "ar", block_length: int | None = None,
             threshold: float | None = None, opt_level: int = 1,
             messages: Sequence[Mapping[str, str]] | None = None, **params: Any) -> GenerationResult:
    """Generate for one prompt (a session with one request).

    Parameters
    ----------
    model:
        From :func:`load`.
    prompt:
        Text (needs the model's tokenizer) or token ids; or give ``messages``.
    mode:
        A mode name, a :class:`Policy` or a :class:`CompiledPolicy`.
    block_length, threshold:
        Mode arguments (see :func:`compile`).
    opt_level:
        Pass pipeline level.
    messages:
        A conversation (``[{"role": ..., "content": ...}]``) rendered by the
        tokenizer's chat template, instead of ``prompt``.
    **params:
        :class:`~graphrt.params.GenerationParams` fields (``max_new_tokens``,
        ``temperature``, ``seed``, ...); the model's EOS ids are added to the stops.
    """
    compiled, ids, gen = prepare(model, prompt, messages, mode, block_length, threshold, opt_level, **params)
    session = Session(model.backbone, model.tokenizer)
    rid = session.add(compiled, ids, gen)
    return session.run()[rid]


def chat(model: Model, messages: Sequence[Mapping[str, str]], mode: str | Policy | CompiledPolicy = "ar",
         **kwargs: Any) -> GenerationResult:
    """Reply to a conversation: :func:`generate` with ``messages`` (the tokenizer's chat template).

    Raises ``ValueError`` when the checkpoint's tokenizer has no chat template.
    """
    return generate(model, mode=mode, messages=messages, **kwargs)
