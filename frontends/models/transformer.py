"""The tri-mode transformer and its KV-cached backbone.

One layer implementation serves two entry points:

* :meth:`Transformer.forward_dense` -- no cache, an explicit ``[B, L, L]`` mask;
  used by training and as the test reference.
* :class:`TransformerBackbone` -- implements :class:`graphrt.backbone.Backbone`
  over a :class:`graphrt.frontends.models.kvcache.RowKVCache`: queries attend to their row's
  cached prefix plus the new tokens the batch's mask allows.

Architecture (docs/design.md): pre-norm RMSNorm, GQA, SiLU-gated MLP, RoPE (plain or
YaRN exactly as transformers computes it, attention factor included), the
released checkpoints' query scaling ``1 + beta * log(1 + floor(pos / orig))``,
no biases unless ``attention_bias`` (Qwen2), optional q/k RMSNorm (Qwen3), tied
embeddings, and an optional draft adapter applied per token to mask tokens only (a LoRA on
any projection, and the mask token's input embedding).

Numerics follow transformers: RoPE angles are computed in float32 and cast to the
model dtype; RMSNorm runs in float32 for half-precision models (and in the model
dtype for float32/float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from graphrt.backbone import ATTENTION_KINDS, BackboneConfig, ForwardBatch
from graphrt.frontends.models.kvcache import RowKVCache, SlotPlan

from .compiled_shapes import BackgroundCompiler, ShapeBuckets, compile_layers, pad_width
from .config import ModelConfig
from .fused_glue import KERNELS_DIGEST, LayerGlue
from .packed_linear import prepack, resolve_linear


# ----------------------------------------------------------------------------- RoPE
def rope_inv_freq(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies ``[head_dim // 2]`` (float32) and the cos/sin attention factor.

    Plain RoPE: ``1 / theta ** (2i / d)``, factor 1. YaRN: transformers'
    ``_compute_yarn_parameters`` (ramp between interpolated and extrapolated
    frequencies over the correction range of ``beta_fast``/``beta_slow``; factor
    ``get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)`` or
    ``0.1 * ln(factor) + 1``).
    """
    dim = config.head_dim
    base = config.rope_theta
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # [d/2]
    if config.rope_type != "yarn":
        return 1.0 / pos_freqs, 1.0
    rp = config.rope_parameters or {}
    factor = float(rp["factor"])
    orig = float(rp["original_max_position_embeddings"])

    def get_mscale(scale: float, mscale: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    attention_factor = rp.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = rp.get("mscale"), rp.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
        else:
            attention_factor = get_mscale(factor)
    beta_fast = rp.get("beta_fast") or 32
    beta_slow = rp.get("beta_slow") or 1

    def correction_dim(num_rotations: float) -> float:
        return (dim * math.log(orig / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rp.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation_factor = 1 - ramp  # [d/2]
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation_factor) + (1.0 / pos_freqs) * extrapolation_factor
    return inv_freq, float(attention_factor)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, H, L, d]`` by ``cos/sin [B, L, d]`` (rotate-half convention)."""
    cos, sin = cos[:, None], sin[:, None]  # [B, 1, L, d]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def group_mask(mask: torch.Tensor, groups: int) -> torch.Tensor:
    """``[B, L, S]`` -> ``[B, 1, groups*L, S]``: the mask of GQA queries folded per KV head.

    Attention runs with queries ``[B, KV, groups*L, d]`` (each KV head's query heads
    stacked along the query axis) so K/V are never repeated; every query head of a
    group shares the token's mask row.
    """
    B, L, S = mask.shape
    return mask[:, None, None].expand(B, 1, groups, L, S).reshape(B, 1, groups * L, S)


# ----------------------------------------------------------------------------- modules
class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)`` over the last dim (float32 for half dtypes)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` with an optional LoRA (``lora_A``, ``lora_B``) applied per token.

    State-dict names: ``weight``, ``bias`` (optional), ``lora_A.weight [r, in]``,
    ``lora_B.weight [out, r]`` (PEFT's layout). The LoRA delta ``scale * B(A(x))`` is
    added where ``select`` is True; elsewhere the output is the plain linear's, bit for bit.
    """

    def __init__(self, in_features: int, out_features: int, rank: int | None = None, alpha: float | None = None,
                 bias: bool = False) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.lora_A: nn.Linear | None = None
        self.lora_B: nn.Linear | None = None
        self.lora_scale = 0.0
        if rank is not None:
            self.lora_A = nn.Linear(in_features, rank, bias=False)
            self.lora_B = nn.Linear(rank, out_features, bias=False)
            self.lora_scale = float(alpha if alpha is not None else rank) / rank

    @classmethod
    def for_config(cls, config: ModelConfig, name: str, in_features: int, out_features: int,
                   bias: bool = False) -> "LoRALinear":
        """The projection ``name`` of ``config``'s model, adapted when the draft adapter targets it."""
        ad = config.draft_adapter if name in config.adapter_targets else None
        return cls(in_features, out_features, rank=None if ad is None else int(ad["rank"]),
                   alpha=None if ad is None else float(ad["alpha"]), bias=bias)

    def forward(self, x: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """``x [B, L, in]``, ``select [B, L]`` bool or None -> ``[B, L, out]``."""
        out = F.linear(x, self.weight, self.bias)
        if self.lora_A is None or select is None:
            return out
        delta = self.lora_B(self.lora_A(x)) * self.lora_scale  # [B, L, out]
        return torch.where(select[..., None], out + delta, out)


class Attention(nn.Module):
    """GQA self-attention with RoPE, optional q/k norm, biases and draft adapter."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, d
        bias = config.attention_bias
        self.q_proj = LoRALinear.for_config(config, "q_proj", h, self.num_heads * d, bias)
        self.k_proj = LoRALinear.for_config(config, "k_proj", h, self.num_kv_heads * d, bias)
        self.v_proj = LoRALinear.for_config(config, "v_proj", h, self.num_kv_heads * d, bias)
        self.o_proj = LoRALinear.for_config(config, "o_proj", self.num_heads * d, h)
        self.q_norm = RMSNorm(d, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(d, config.rms_norm_eps) if config.qk_norm else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, qscale: torch.Tensor | None,
                mask: torch.Tensor | None, adapter: torch.Tensor | None, cached: "CachedCall | None" = None,
                layer: int = 0) -> torch.Tensor:
        """One attention block.

        Parameters
        ----------
        x: ``[B, L, hidden]`` normalised input.
        cos, sin: ``[B, L, d]`` RoPE tables.
        qscale: ``[B, L]`` query scale or None.
        mask: ``[B, 1, g*L, S]`` bool from :func:`group_mask` (``g`` query heads per KV
            head) over the ``S`` keys: the new tokens (no cache) or the rows' first
            ``S = plan.keys`` cache slots; None when every query sees every key.
        adapter: ``[B, L]`` bool or None.
        cached: the call's cache tensors and indices; the new K/V are written into their
            slots first and attention runs over the cache storage in place.
        layer: this block's layer index (into the cache).

        Returns
        -------
        ``[B, L, hidden]``.
        """
        B, L, _ = x.shape
        H, KV, d = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x, adapter).view(B, L, H, d)  # [B, L, H, d]
        k = self.k_proj(x, adapter).view(B, L, KV, d)  # [B, L, KV, d]
        v = self.v_proj(x, adapter).view(B, L, KV, d)  # [B, L, KV, d]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), cos, sin)  # [B, H, L, d]
        k = apply_rope(k.transpose(1, 2), cos, sin)  # [B, KV, L, d]
        if qscale is not None:
            q = q * qscale[:, None, :, None]
        if cached is not None:  # new K/V into their slots first
            kl, vl = cached.k[layer], cached.v[layer]
            kl.index_put_(cached.index, k.transpose(1, 2).to(kl.dtype))
            vl.index_put_(cached.index, v.to(vl.dtype))
        return self.o_proj(self.attend(q, k, v.transpose(1, 2), mask, cached, layer), adapter)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               cached: "CachedCall | None", layer: int) -> torch.Tensor:
        """Attention of the new tokens' queries, their K/V already in the cache when there is one.

        Parameters
        ----------
        q: ``[B, H, L, d]`` (RoPE applied).
        k, v: ``[B, KV, L, d]``: the new tokens' keys (RoPE applied) and values, read without a cache or
            for a causal prefill.
        mask, cached, layer: as in :meth:`forward`.

        Returns
        -------
        ``[B, L, H*d]``: the heads' outputs side by side (``o_proj``'s input).
        """
        B, H, L, d = q.shape
        KV = self.num_kv_heads
        if cached is not None and cached.causal:  # prefill from empty rows: causal over the new tokens only
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            return o.transpose(1, 2).reshape(B, L, H * d)  # [B, L, H*d]
        if cached is not None:
            kl, vl = cached.k[layer], cached.v[layer]
            keys, vals = kl[:, :, :cached.keys], vl[:, :, :cached.keys]  # [B', KV, S, d] views
            if cached.gather is not None:  # scattered rows: gather their spans only (never the row capacity)
                keys, vals = keys.index_select(0, cached.gather), vals.index_select(0, cached.gather)
        else:
            keys, vals = k, v  # [B, KV, L, d]
        # GQA without copying K/V: fold each KV group's query heads into the query axis.
        qg = q.reshape(B, KV, (H // KV) * L, d)  # [B, KV, g*L, d]  (head h = kv*g + j)
        spread = cached.spread if cached is not None else None
        if spread is not None:  # the rows lie in a range with holes: attend over the range, the holes idle
            qg = qg.new_zeros((keys.shape[0],) + qg.shape[1:]).index_copy_(0, spread, qg)
        o = F.scaled_dot_product_attention(qg, keys, vals, attn_mask=mask)  # [B, KV, g*L, d]
        if spread is not None:
            o = o.index_select(0, spread)
        return o.reshape(B, H, L, d).transpose(1, 2).reshape(B, L, H * d)  # [B, L, H*d]


@dataclass
class CachedCall:
    """What the layers of one cached call share, as flat tensors (so a compiled stack guards on
    tensor shapes only): see :class:`graphrt.frontends.models.kvcache.SlotPlan` for ``k``, ``v``, ``index``,
    ``gather``, ``keys`` and ``spread``; ``causal``: attention is plain causal self-attention over the new
    tokens (prefill of empty rows)."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    index: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    gather: torch.Tensor | None
    keys: int
    causal: bool
    spread: torch.Tensor | None = None

    @classmethod
    def of(cls, plan: SlotPlan, causal: bool) -> "CachedCall":
        """The call for ``plan``."""
        return cls(plan.k, plan.v, plan.index, plan.gather, plan.keys, causal, plan.spread)


class MLP(nn.Module):
    """SiLU-gated MLP: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h, m = config.hidden_size, config.intermediate_size
        self.gate_proj = LoRALinear.for_config(config, "gate_proj", h, m)
        self.up_proj = LoRALinear.for_config(config, "up_proj", h, m)
        self.down_proj = LoRALinear.for_config(config, "down_proj", m, h)

    def forward(self, x: torch.Tensor, adapter: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, L, hidden]``, ``adapter [B, L]`` bool or None -> ``[B, L, hidden]``."""
        return self.down_proj(F.silu(self.gate_proj(x, adapter)) * self.up_proj(x, adapter), adapter)


class DecoderLayer(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # Set by prepack where it applies: calls over the cache run the work between the packed products
        # as fused kernels (frontends/models/fused_glue.py).
        self.glue: LayerGlue | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, qscale: torch.Tensor | None,
                mask: torch.Tensor | None, adapter: torch.Tensor | None, cached: CachedCall | None = None,
                layer: int = 0) -> torch.Tensor:
        """``x [B, L, hidden]`` -> ``[B, L, hidden]``; see :meth:`Attention.forward`."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, qscale, mask, adapter, cached, layer)
        return x + self.mlp(self.post_attention_layernorm(x), adapter)


class Encoder(nn.Module):
    """Embedding, decoder layers and final norm (state-dict prefix ``encoder.``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        # The draft adapter's input embedding of the mask token (PEFT's trainable tokens); the
        # tied output head keeps the base row, so AR logits are the base model's.
        ad = config.draft_adapter
        self.mask_embedding = (nn.Parameter(torch.zeros(1, config.hidden_size))
                               if ad is not None and ad.get("mask_embedding") else None)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Transformer(nn.Module):
    """The tri-mode transformer (weights named as in docs/design.md's checkpoint format).

    Parameters
    ----------
    config:
        The architecture.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.diffusion_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.diffusion_head.weight = self.encoder.embed_tokens.weight
        inv_freq, self.rope_attention_factor = rope_inv_freq(config)
        self.register_buffer("rope_inv_freq", inv_freq, persistent=False)  # [d/2] float32

    def reset_rope(self, device: torch.device | str | None = None) -> None:
        """Recompute the (non-persistent) RoPE buffer, e.g. after building on the meta device."""
        inv_freq, self.rope_attention_factor = rope_inv_freq(self.config)
        dev = device if device is not None else self.encoder.embed_tokens.weight.device
        self.rope_inv_freq = inv_freq.to(dev)

    def tie_weights(self) -> None:
        """Make ``diffusion_head.weight`` the embedding matrix when ``tie_word_embeddings``."""
        if self.config.tie_word_embeddings:
            self.diffusion_head.weight = self.encoder.embed_tokens.weight

    # ------------------------------------------------------------------ pieces
    def rope_tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``positions [B, L]`` -> ``cos, sin [B, L, d]`` (angles in float32, as transformers)."""
        freqs = positions[..., None].float() * self.rope_inv_freq.float()  # [B, L, d/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [B, L, d]
        f = self.rope_attention_factor
        return (emb.cos() * f).to(dtype), (emb.sin() * f).to(dtype)

    def query_scale(self, positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """``1 + beta * log(1 + floor(pos / original_max))`` ``[B, L]``, or None without a beta."""
        beta = self.config.query_scale_beta
        if beta is None:
            return None
        orig = self.config.original_max_positions
        return (1 + beta * torch.log(1 + torch.floor(positions / orig))).to(dtype)

    def run_layers(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
                   adapter: torch.Tensor | None = None, cached: CachedCall | None = None,
                   last: torch.Tensor | None = None) -> torch.Tensor:
        """The whole stack, shared by the dense and the cached path (and what gets compiled).

        Parameters
        ----------
        tokens, positions: ``[B, L]`` int64.
        mask: ``[B, 1, g*L, S]`` bool from :func:`group_mask`, True = may attend, or None
            (every query sees every key); ``S`` = L without a cache, else ``cached.keys``.
        adapter: ``[B, L]`` bool or None.
        cached: the call's cache tensors and indices (None: no cache).
        last: ``[B]`` or ``[B, n]`` int64, or None: the token(s) per row whose logits to return
            (the output head then runs on ``B * n`` tokens, not ``B * L``).

        Returns
        -------
        logits ``[B, L, V]``, or ``[B, n, V]`` with ``last`` (``n = 1`` for a ``[B]`` one).
        """
        h = self.encoder.embed_tokens(tokens)  # [B, L, hidden]
        if self.encoder.mask_embedding is not None:
            is_mask = (tokens == self.config.mask_token_id)[..., None]  # [B, L, 1]
            h = torch.where(is_mask, self.encoder.mask_embedding.to(h.dtype), h)
        cos, sin = self.rope_tables(positions, h.dtype)  # [B, L, d]
        qscale = self.query_scale(positions, h.dtype)  # [B, L] or None
        if not self.config.adapter_targets:
            adapter = None
        layers = self.encoder.layers
        # A packed layer over the cache runs the work between its products fused (frontends/models/fused_glue.py).
        glued = cached is not None and layers[0].glue is not None
        call = layers[0].glue.call(h, cos, sin, cached, mask, adapter) if glued else None
        for i, layer in enumerate(layers):
            if call is not None and layer.glue is not None:
                h = layer.glue.forward(h, mask, adapter, cached, i, call)
            else:
                h = layer(h if call is None else call.finish(h), cos, sin, qscale, mask, adapter, cached, i)
        if call is not None:
            h = call.finish(h)
        if last is not None:
            idx = last[:, None] if last.dim() == 1 else last  # [B, n]
            h = h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1]))  # [B, n, hidden]
        return self.diffusion_head(self.encoder.norm(h))  # [B, L or n, V]

    # ------------------------------------------------------------------ entry points
    def forward_dense(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                      adapter: torch.Tensor | None = None) -> torch.Tensor:
        """Cache-free forward (training and test reference).

        Parameters
        ----------
        tokens: ``[B, L]`` int64 token ids.
        positions: ``[B, L]`` int64 absolute positions (RoPE and query scale).
        mask: ``[B, L, L]`` bool, ``mask[b, i, j]``: query i may attend to key j.
            Every query must be allowed at least one key (else its output is NaN).
        adapter: ``[B, L]`` bool, where the draft adapter applies (ignored without one).

        Returns
        -------
        torch.Tensor
            Logits ``[B, L, V]`` in the model dtype.
        """
        B, L = tokens.shape
        if positions.shape != (B, L) or mask.shape != (B, L, L) or mask.dtype != torch.bool:
            raise ValueError(f"forward_dense: expected positions [{B}, {L}] and bool mask [{B}, {L}, {L}], "
                             f"found positions {list(positions.shape)}, mask {list(mask.shape)} {mask.dtype}")
        groups = self.encoder.layers[0].self_attn.num_heads // self.encoder.layers[0].self_attn.num_kv_heads
        return self.run_layers(tokens, positions, group_mask(mask, groups), adapter)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                adapter: torch.Tensor | None = None) -> torch.Tensor:
        """Alias of :meth:`forward_dense`."""
        return self.forward_dense(tokens, positions, mask, adapter)


def causal_mask(B: int, L: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[B, L, L]`` bool lower-triangular mask."""
    return torch.ones(L, L, dtype=torch.bool, device=device).tril().expand(B, L, L)


# ----------------------------------------------------------------------------- backbone
def _last(batch: ForwardBatch, device: torch.device) -> torch.Tensor | None:
    """The tokens whose logits the batch wants, for :meth:`Transformer.run_layers`: ``[B]``, each row's last
    valid token (``"last"``), ``[B, n]`` (``"index"``), or None (all)."""
    if batch.logits == "index":
        return batch.logit_index.to(device)  # type: ignore[union-attr]
    if batch.logits != "last":
        return None
    return batch.last_valid().to(device)


class TransformerBackbone:
    """A :class:`Transformer` behind :class:`graphrt.backbone.Backbone`, with its own KV cache.

    Parameters
    ----------
    model:
        The model; dtype and device of the cache follow its parameters.
    max_rows:
        Number of cache rows (concurrent requests).
    row_capacity:
        Slots per row; defaults to ``config.max_position_embeddings``.
    scratch:
        Extra slots per row for the K/V of tokens that do not persist (denoise and
        draft tokens), after the row's end; default ``block_size * (block_size + 1)``,
        the widest built-in forward (quadratic self-speculation).
    compile:
        Run the layer stack compiled (:func:`compile_layers`) at static shapes: each
        call is padded to its :class:`~graphrt.frontends.models.compiled_shapes.ShapeBuckets`
        width, batch size and key span, so each bucket compiles once and never again:
        ``True`` compiles a bucket on its first call (that call waits), ``"freeze"``
        likewise with inductor's weight freezing, ``"background"`` on a worker thread
        (:class:`~graphrt.frontends.models.compiled_shapes.BackgroundCompiler`) while the calls
        that need it run eagerly, so no call ever waits for a compile. Inductor's compiled
        code is cached on disk and reused across runs, so only the first run on a machine
        pays the full compile.
    linear:
        ``"eager"`` runs ``F.linear`` on the model's weights; ``"packed"`` prepacks them in blocks
        once, here, with q/k/v and gate/up fused (:func:`~graphrt.frontends.models.packed_linear.prepack`:
        float32 CPU inference only; the model cannot be trained afterwards); ``"auto"`` packs where
        that applies (float32, CPU, not compiled).

    Attributes
    ----------
    has_adapter:
        Whether the model has a draft adapter, which a call's ``adapter`` tokens run with (the cost
        model measures a call with and without it, :func:`graphrt.cost_model.calibrate`).

    Notes
    -----
    Per call the host reads the rows' cache lengths (kept on the host) to size the
    prefix, and ``positions``/``kv_write``/``valid`` to update them; pass those as
    CPU tensors to keep the call free of device-to-host syncs.
    """

    def __init__(self, model: Transformer, max_rows: int, row_capacity: int | None = None,
                 compile: bool | str = False, scratch: int | None = None, linear: str = "eager") -> None:
        self.model = model
        cfg = model.config
        self.config: BackboneConfig = cfg.to_backbone_config()
        capacity = cfg.max_position_embeddings if row_capacity is None else int(row_capacity)
        if not 0 < capacity <= cfg.max_position_embeddings:
            raise ValueError(f"TransformerBackbone: row_capacity expected in [1, {cfg.max_position_embeddings}] "
                             f"(max_position_embeddings), found {row_capacity}")
        p = next(model.parameters())
        self.dtype, self.device = p.dtype, p.device
        attn = model.encoder.layers[0].self_attn
        self._groups = attn.num_heads // attn.num_kv_heads
        scratch = cfg.block_size * (cfg.block_size + 1) if scratch is None else int(scratch)
        self.cache = RowKVCache(max_rows, cfg.num_hidden_layers, attn.num_kv_heads, capacity,
                                cfg.head_dim, dtype=self.dtype, device=self.device, scratch=scratch)
        self.has_adapter = cfg.draft_adapter is not None
        self._run = model.run_layers
        if compile not in (False, True, "freeze", "background"):
            raise ValueError(f"TransformerBackbone: compile expected False, True, 'freeze' or 'background', "
                             f"found {compile!r}")
        self.compiled = bool(compile)
        # -- linear-layer path (frontends/models/packed_linear.py): weights prepacked once, for CPU inference
        self.linear = resolve_linear(linear, self.dtype, self.device, compile)
        if self.linear == "packed":
            prepack(model)
        self.fused_glue = any(layer.glue is not None for layer in model.encoder.layers)  # see fused_glue.py
        self.kernels = KERNELS_DIGEST if self.linear == "packed" else ""  # what the cost model's key names
        # --
        self.shapes_seen: set[tuple[int, ...]] = set()  # (batch, width, keys, views, causal, last only)
        self.buckets = ShapeBuckets.for_block(cfg.block_size, self.cache.pad_slot, max_rows)
        self.compiler = BackgroundCompiler(self._compile_bucket) if compile == "background" else None
        if compile:
            self._run = compile_layers(model, self.buckets, freeze=compile == "freeze")

    # ------------------------------------------------------------------ rows
    @property
    def row_capacity(self) -> int:
        """Cache slots per row."""
        return self.cache.capacity

    def cache_length(self, row: int) -> int:
        """Number of valid cached positions of ``row``."""
        return self.cache.length(row)

    def crop(self, row: int, length: int) -> None:
        """Forget cached positions ``>= length`` of ``row``."""
        self.cache.crop(row, length)

    def alloc_rows(self, n: int) -> list[int]:
        """Reserve ``n`` free rows (RuntimeError when too few are free)."""
        return self.cache.alloc_rows(n)

    def free_row_count(self) -> int:
        """Rows :meth:`alloc_rows` can still hand out."""
        return self.cache.free_row_count()

    def free_rows(self, rows: list[int]) -> None:
        """Return rows to the pool."""
        self.cache.free_rows(rows)

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """Run one packed call; see :meth:`graphrt.backbone.Backbone.forward`.

        The new tokens' K/V go into their cache slots first (non-writing tokens into
        scratch slots after the row's end); every layer then attends over the rows'
        storage in place through one ``[B, L, keys]`` mask built here, once per call
        (none at all for a prefill of empty rows, which runs causal attention, or when
        every query sees every key). Rows whose id is outside ``[0, max_rows)`` are
        padding (no prefix, no writes). A query that may attend to nothing (padding)
        attends to itself, so no output is NaN.

        Returns
        -------
        torch.Tensor
            Logits ``[B, L, V]`` in the model dtype.
        """
        B, L = batch.tokens.shape
        self._check(batch, B, L)
        if self.compiled:
            return self._forward_bucketed(batch, B, L)
        tokens = batch.tokens
        dev = self.device
        write = batch.kv_write & batch.valid  # [B, L] (host if the batch is on the host)
        plan = self.cache.plan(batch.rows, batch.positions, write, batch.valid, spread=True)
        tok = tokens.to(dev).clamp(0, self.config.vocab_size - 1)  # [B, L]
        pos = batch.positions.to(dev).clamp_min(0)  # [B, L]
        causal = self._causal_prefill(batch, plan)
        mask = None if causal else self._mask(batch, plan, B, L)
        if mask is not None and plan.spread is not None:  # the holes' (idle) queries see every key
            mask = mask.new_ones((plan.k[0].shape[0],) + mask.shape[1:]).index_copy_(0, plan.spread, mask)
        # A call with no draft token (prefill, AR, verification) skips the adapter: it adds nothing there.
        adapter = batch.adapter.to(dev) if self.has_adapter and bool(batch.adapter.any()) else None
        logits = self._run(tok, pos, mask, adapter, CachedCall.of(plan, causal), _last(batch, dev))
        self.cache.commit(plan)
        return logits

    def _forward_bucketed(self, batch: ForwardBatch, B: int, L: int) -> torch.Tensor:
        """The compiled path: the call padded to its bucket width and batch (padding rows that never
        write), keys to their bucket, one mask (none for a prefill of empty rows), so the compiled stack
        sees a fixed set of static shapes (one graph per bucket, whichever rows the call uses). A bucket still compiling in the
        background runs the same padded call through the eager stack."""
        Lb, Bb = self.buckets.width(L), self.buckets.batch(B)
        if Lb != L:
            batch = pad_width(batch, Lb)
        plan = self.cache.plan(batch.rows, batch.positions, batch.kv_write & batch.valid, batch.valid,
                               pad_rows=Bb - B)
        causal = self._causal_prefill(batch, plan)  # no mask, no key span
        plan.keys = 0 if causal else self.buckets.keys(plan.keys)
        dev = self.device
        last = _last(batch, dev) if batch.logits == "last" else None  # one graph per bucket: [B] or all
        key = (Bb, Lb, plan.keys, plan.gather is None, causal, last is not None)
        if self.compiler is None:
            self.shapes_seen.add(key)
            run = self._run
        else:
            run = self._run if self.compiler.ready(key) else self.model.run_layers

        def rows(t: torch.Tensor) -> torch.Tensor:  # [B, ...] -> [Bb, ...] with zero padding rows
            return F.pad(t.to(dev), (0, 0) * (t.dim() - 1) + (0, Bb - B))

        tok = rows(batch.tokens.clamp(0, self.config.vocab_size - 1))  # [Bb, Lb]
        pos = rows(batch.positions.clamp_min(0))  # [Bb, Lb]
        mask = None if causal else torch.cat([self._mask(batch, plan, B, Lb, allow_none=False),
                                              self._padding_mask(Bb - B, Lb, plan.keys)])
        adapter = rows(batch.adapter) if self.has_adapter else None
        logits = run(tok, pos, mask, adapter, CachedCall.of(plan, causal), None if last is None else rows(last))
        self.cache.commit(plan)
        return logits[:B] if last is not None else logits[:B, :L]

    @staticmethod
    def _causal_prefill(batch: ForwardBatch, plan: SlotPlan) -> bool:
        """Whether the call is a prefill of empty rows whose valid tokens attend causally among themselves
        (kind ``"causal"``, or a ``"mask"`` of right-padded causal rows): then attention is causal
        self-attention over the new tokens, with no mask."""
        if not plan.contiguous_prefill or batch.kind not in ("causal", "mask"):
            return False
        if batch.kind == "causal":
            return True
        L = batch.tokens.shape[1]
        pair = batch.valid[:, :, None] & batch.valid[:, None, :]  # [B, L, L]: query and key both valid
        causal = torch.ones(L, L, dtype=torch.bool, device=pair.device).tril()
        return bool(((batch.attention & pair) == (causal & pair)).all())

    def _padding_mask(self, rows: int, width: int, keys: int) -> torch.Tensor:
        """``[rows, 1, g*width, keys]``: padding rows' queries see key 0 only (never NaN, never read)."""
        mask = torch.zeros((rows, 1, self._groups * width, keys), dtype=torch.bool, device=self.device)
        mask[..., 0] = True
        return mask

    def _compile_bucket(self, key: tuple[int, int, int, bool, bool, bool]) -> None:
        """Compile bucket ``key`` = (batch, width, keys, row views, causal, last only) by running the compiled
        stack on padding rows laid out as a real call of that bucket: they write only padding slots, so live
        calls are undisturbed."""
        Bb, Lb, keys, views, causal, last = key
        plan = self.cache.padding_plan(Bb, Lb, views)
        plan.keys = keys
        tokens, positions = (torch.zeros((Bb, Lb), dtype=torch.long, device=self.device) for _ in range(2))
        mask = None if causal else self._padding_mask(Bb, Lb, keys)
        adapter = torch.zeros((Bb, Lb), dtype=torch.bool, device=self.device) if self.has_adapter else None
        rows = torch.zeros(Bb, dtype=torch.long, device=self.device) if last else None
        self._run(tokens, positions, mask, adapter, CachedCall.of(plan, causal), rows)
        self.shapes_seen.add(key)

    def _check(self, batch: ForwardBatch, B: int, L: int) -> None:
        if len(batch.rows) != B:
            raise ValueError(f"ForwardBatch: expected {B} rows (tokens is [{B}, {L}]), found {len(batch.rows)}")
        for name in ("positions", "kv_write", "adapter", "valid"):
            t = getattr(batch, name)
            if tuple(t.shape) != (B, L):
                raise ValueError(f"ForwardBatch.{name}: expected shape [{B}, {L}], found {list(t.shape)}")
        if tuple(batch.attention.shape) != (B, L, L):
            raise ValueError(f"ForwardBatch.attention: expected shape [{B}, {L}, {L}], "
                             f"found {list(batch.attention.shape)}")
        if batch.kind not in ATTENTION_KINDS:
            raise ValueError(f"ForwardBatch.kind: expected one of {ATTENTION_KINDS}, found {batch.kind!r}")

    def _mask(self, batch: ForwardBatch, plan: SlotPlan, B: int, L: int,
              allow_none: bool = True) -> torch.Tensor | None:
        """The call's grouped ``[B, 1, g*L, keys]`` mask over the rows' slots, or None when all are visible."""
        K = plan.keys
        lens = plan.lengths
        full_rows = allow_none and all(n == K - L for n in lens) and bool(batch.valid.all())
        if full_rows and (batch.kind == "bidirectional" or (L == 1 and bool(batch.attention.all()))):
            return None  # each row's keys are exactly its prefix plus all of its (distinct) new slots
        dev = self.device
        new = batch.attention.to(dev) & batch.valid.to(dev)[:, None, :]  # [B, L, L]
        if min(lens, default=0) == 0:  # a query allowed no key (padding) attends to itself: no NaN
            empty = torch.tensor([n == 0 for n in lens], device=dev)  # [B]
            lonely = ~new.any(dim=2) & empty[:, None]  # [B, L]
            new = new | (torch.eye(L, dtype=torch.bool, device=dev)[None] & lonely[:, :, None])
        lens_t = torch.tensor(lens, device=dev)  # [B]
        mask = (torch.arange(K, device=dev)[None, :] < lens_t[:, None])[:, None, :].repeat(1, L, 1)  # [B, L, K]
        mask.scatter_(2, plan.slot[:, None, :].expand(B, L, L), new)  # new tokens at their slots
        pad = ~batch.valid.to(dev)  # [B, L]: padding queries see their row's shared padding slot (never NaN)
        if bool(pad.any()):
            own = plan.slot[:, :, None]  # [B, L, 1]
            mask.scatter_(2, own, mask.gather(2, own) | pad[:, :, None])
        return group_mask(mask, self._groups)

    __call__ = forward


__all__ = ["Transformer", "TransformerBackbone", "RMSNorm", "LoRALinear", "rope_inv_freq", "apply_rope",
           "causal_mask", "group_mask"]
