"""The model configuration: what ``config.json`` of a checkpoint holds.

:class:`ModelConfig` mirrors the fields of a ``nemotron_labs_diffusion``
checkpoint's ``config.json`` (see docs/design.md, "Checkpoints"), plus
the few optional fields that plain AR checkpoints map onto (Qwen2's q/k/v
biases, Qwen3's q/k norms) and the draft adapter (a LoRA on ``o_proj``).

RoPE is described by ``rope_theta`` and ``rope_parameters`` (transformers 5
naming; ``rope_scaling`` is accepted as an alias when reading). For YaRN,
``rope_parameters`` holds ``rope_type: "yarn"``, ``factor``,
``original_max_position_embeddings``, ``beta_fast``, ``beta_slow`` and optionally
``mscale``, ``mscale_all_dim``, ``attention_factor``, ``truncate``; the released
checkpoints' query scaling ``1 + beta * log(1 + floor(pos / original_max))`` is
enabled by ``llama_4_scaling_beta`` inside ``rope_parameters`` (the name
transformers' ``Ministral3`` uses).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from graphrt.backbone import BackboneConfig

MODEL_TYPE = "nemotron_labs_diffusion"
DLM_PARADIGMS = ("bidirectional", "autoregressive", "block_diff")
ROPE_TYPES = ("default", "yarn")
#: The projections a draft adapter may adapt (PEFT ``target_modules`` names).
ADAPTER_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class ModelConfig:
    """Architecture and special tokens of a tri-mode transformer.

    Attributes
    ----------
    vocab_size, hidden_size, intermediate_size, num_hidden_layers:
        Embedding rows, residual width, MLP width, number of decoder layers.
    num_attention_heads, num_key_value_heads, head_dim:
        Query heads, K/V heads (GQA; must divide the query heads) and head width.
    rms_norm_eps:
        Epsilon of every RMSNorm.
    rope_theta:
        RoPE base.
    rope_parameters:
        ``None`` for plain RoPE, or a dict (``rope_type`` ``"default"``/``"yarn"``,
        YaRN fields, optional ``llama_4_scaling_beta``); see the module docstring.
    max_position_embeddings:
        Number of absolute positions the model supports.
    tie_word_embeddings:
        ``True``: the output head shares ``encoder.embed_tokens.weight``.
    bos_token_id, eos_token_id, mask_token_id, pad_token_id:
        Special token ids. ``eos_token_id`` may be a list (the first is the
        runtime's EOS).
    block_size:
        Default block length of diffusion and self-speculation.
    dlm_paradigm:
        How the model was trained: ``bidirectional``, ``autoregressive`` or ``block_diff``.
    model_type:
        Always ``"nemotron_labs_diffusion"`` once loaded (AR checkpoints are mapped).
    attention_bias:
        q/k/v projections carry biases (Qwen2).
    qk_norm:
        RMSNorm over each head of q and k before RoPE (Qwen3).
    draft_adapter:
        ``None`` or ``{"rank": r, "alpha": a, "target_modules": [...], "mask_embedding": bool}``:
        a LoRA (scaled by ``alpha / rank``) on the named projections (default ``["o_proj"]``; any of
        :data:`ADAPTER_MODULES`) applied to draft tokens only, and optionally a trained input
        embedding for ``mask_token_id`` (for a base model that never saw the mask token; the
        output head is untouched, so AR decoding is the base model's). An adapter with a mask
        embedding is what taught the model masks, so block diffusion's denoise forwards apply it too.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_parameters: dict[str, Any] | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    mask_token_id: int = 100
    pad_token_id: int | None = None
    block_size: int = 32
    dlm_paradigm: str = "block_diff"
    model_type: str = MODEL_TYPE
    attention_bias: bool = False
    qk_norm: bool = False
    draft_adapter: dict[str, Any] | None = None

    # ------------------------------------------------------------------ derived
    @property
    def rope_type(self) -> str:
        """``"default"`` or ``"yarn"``."""
        rp = self.rope_parameters or {}
        return str(rp.get("rope_type", rp.get("type", "default")))

    @property
    def query_scale_beta(self) -> float | None:
        """``llama_4_scaling_beta`` of the released checkpoints, or ``None``."""
        beta = (self.rope_parameters or {}).get("llama_4_scaling_beta")
        return None if beta is None else float(beta)

    @property
    def original_max_positions(self) -> int:
        """``original_max_position_embeddings`` (YaRN / query scaling), else ``max_position_embeddings``."""
        rp = self.rope_parameters or {}
        return int(rp.get("original_max_position_embeddings") or self.max_position_embeddings)

    @property
    def adapter_targets(self) -> tuple[str, ...]:
        """The projections the draft adapter adapts (empty without an adapter)."""
        if self.draft_adapter is None:
            return ()
        return tuple(self.draft_adapter.get("target_modules", ["o_proj"]))

    @property
    def first_eos_token_id(self) -> int | None:
        """The EOS id the runtime uses (the first one when several are given)."""
        if isinstance(self.eos_token_id, list):
            return self.eos_token_id[0] if self.eos_token_id else None
        return self.eos_token_id

    # ------------------------------------------------------------------ (de)serialise
    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> "ModelConfig":
        """Build and validate a config from a ``config.json`` dict.

        Parameters
        ----------
        d:
            The parsed JSON object. Unknown keys are ignored; ``rope_scaling`` is an
            alias of ``rope_parameters`` and ``rope_theta`` may live inside it.
        source:
            Where ``d`` came from (a file path), quoted in error messages.

        Returns
        -------
        ModelConfig

        Raises
        ------
        ValueError
            A required field is missing, has the wrong type, or the fields are
            inconsistent; the message names the field, what was expected, what was
            found and ``source``.
        """
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object, found {type(d).__name__}")
        d = dict(d)
        if d.get("rope_parameters") is None and d.get("rope_scaling") is not None:
            d["rope_parameters"] = d["rope_scaling"]
        rp = d.get("rope_parameters")
        if "rope_theta" not in d and isinstance(rp, dict) and "rope_theta" in rp:
            d["rope_theta"] = rp["rope_theta"]
        if d.get("head_dim") is None and _is_int(d.get("hidden_size")) and _is_int(d.get("num_attention_heads")):
            if d["num_attention_heads"] > 0:
                d["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
        if d.get("num_key_value_heads") is None and "num_attention_heads" in d:
            d["num_key_value_heads"] = d["num_attention_heads"]
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                if f.default is dataclasses.MISSING:
                    raise ValueError(f"{source}: missing required field '{f.name}' (expected {_FIELD_TYPES[f.name][1]})")
                continue
            kwargs[f.name] = _check_field(f.name, d[f.name], source)
        cfg = cls(**kwargs)
        cfg.validate(source)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` dict (``from_dict(to_dict())`` is the identity)."""
        out = dataclasses.asdict(self)
        out["model_type"] = MODEL_TYPE
        return out

    def to_backbone_config(self) -> BackboneConfig:
        """The facts the runtime needs (:class:`graphrt.backbone.BackboneConfig`)."""
        return BackboneConfig(
            vocab_size=self.vocab_size,
            max_positions=self.max_position_embeddings,
            mask_token_id=self.mask_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.first_eos_token_id,
            block_size=self.block_size,
            denoise_adapter=bool((self.draft_adapter or {}).get("mask_embedding")),
        )

    def validate(self, source: str = "<config>") -> None:
        """Check cross-field consistency; raise ``ValueError`` naming the field and ``source``."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim",
                     "max_position_embeddings", "block_size"):
            v = getattr(self, name)
            if v <= 0:
                raise ValueError(f"{source}: field '{name}': expected a positive int, found {v}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"{source}: field 'num_key_value_heads': expected a divisor of num_attention_heads="
                f"{self.num_attention_heads}, found {self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"{source}: field 'head_dim': expected an even number (RoPE), found {self.head_dim}")
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise ValueError(f"{source}: field 'mask_token_id': expected 0 <= id < vocab_size={self.vocab_size}, "
                             f"found {self.mask_token_id}")
        if self.dlm_paradigm not in DLM_PARADIGMS:
            raise ValueError(f"{source}: field 'dlm_paradigm': expected one of {DLM_PARADIGMS}, found {self.dlm_paradigm!r}")
        if self.model_type != MODEL_TYPE:
            raise ValueError(f"{source}: field 'model_type': expected {MODEL_TYPE!r}, found {self.model_type!r}")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"{source}: field 'rope_parameters.rope_type': expected one of {ROPE_TYPES}, "
                             f"found {self.rope_type!r}")
        if self.rope_type == "yarn":
            rp = self.rope_parameters or {}
            for key in ("factor", "original_max_position_embeddings"):
                if not isinstance(rp.get(key), (int, float)) or isinstance(rp.get(key), bool):
                    raise ValueError(f"{source}: field 'rope_parameters.{key}': expected a number for YaRN, "
                                     f"found {rp.get(key)!r}")
        if self.draft_adapter is not None:
            for key in ("rank", "alpha"):
                v = self.draft_adapter.get(key)
                if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                    raise ValueError(f"{source}: field 'draft_adapter.{key}': expected a positive number, found {v!r}")
            if not _is_int(self.draft_adapter["rank"]):
                raise ValueError(f"{source}: field 'draft_adapter.rank': expected an int, "
                                 f"found {self.draft_adapter['rank']!r}")
            targets = self.draft_adapter.get("target_modules", ["o_proj"])
            if (not isinstance(targets, list) or not targets
                    or any(t not in ADAPTER_MODULES for t in targets)):
                raise ValueError(f"{source}: field 'draft_adapter.target_modules': expected a non-empty list "
                                 f"of {ADAPTER_MODULES}, found {targets!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_float(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_opt_int(v: Any) -> bool:
    return v is None or _is_int(v)


def _is_eos(v: Any) -> bool:
    return _is_opt_int(v) or (isinstance(v, list) and all(_is_int(x) for x in v))


_FIELD_TYPES: dict[str, tuple[Any, str]] = {
    "vocab_size": (_is_int, "int"),
    "hidden_size": (_is_int, "int"),
    "intermediate_size": (_is_int, "int"),
    "num_hidden_layers": (_is_int, "int"),
    "num_attention_heads": (_is_int, "int"),
    "num_key_value_heads": (_is_int, "int"),
    "head_dim": (_is_int, "int"),
    "rms_norm_eps": (_is_float, "float"),
    "rope_theta": (_is_float, "float"),
    "rope_parameters": (lambda v: v is None or isinstance(v, dict), "dict or null"),
    "max_position_embeddings": (_is_int, "int"),
    "tie_word_embeddings": (lambda v: isinstance(v, bool), "bool"),
    "bos_token_id": (_is_opt_int, "int or null"),
    "eos_token_id": (_is_eos, "int, list of int, or null"),
    "mask_token_id": (_is_int, "int"),
    "pad_token_id": (_is_opt_int, "int or null"),
    "block_size": (_is_int, "int"),
    "dlm_paradigm": (lambda v: isinstance(v, str), "str"),
    "model_type": (lambda v: isinstance(v, str), "str"),
    "attention_bias": (lambda v: isinstance(v, bool), "bool"),
    "qk_norm": (lambda v: isinstance(v, bool), "bool"),
    "draft_adapter": (lambda v: v is None or isinstance(v, dict), "dict or null"),
}


def _check_field(name: str, value: Any, source: str) -> Any:
    ok, expected = _FIELD_TYPES[name]
    if not ok(value):
        raise ValueError(f"{source}: field '{name}': expected {expected}, found {value!r} ({type(value).__name__})")
    if expected == "float":
        return float(value)
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return value


def default_test_config(**overrides: Any) -> ModelConfig:
    """A tiny config for tests and demos (vocab 96, hidden 32, 2 layers, 4/2 heads).

    Parameters
    ----------
    **overrides:
        Field values replacing the defaults.
    """
    base = dict(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5,
        rope_theta=10000.0, rope_parameters=None, max_position_embeddings=256,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, mask_token_id=95,
        pad_token_id=0, block_size=4, dlm_paradigm="block_diff",
    )
    base.update(overrides)
    cfg = ModelConfig(**base)
    cfg.validate("default_test_config")
    return cfg


__all__ = ["ModelConfig", "MODEL_TYPE", "DLM_PARADIGMS", "default_test_config"]
