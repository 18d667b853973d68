"""A packed decoder layer's work between its products, fused into three Numba kernels (CPU, float32).

Once the products stream their weights near the machine's bandwidth
(:mod:`~graphrt.frontends.models.blocked_gemm`), what is left of a decode step is the layer's element-wise work:
two RMSNorms, the residual adds, RoPE on queries and keys, the K/V cache writes, SiLU and the gate product.
In torch these are about 45 calls per layer of a few microseconds each, a third of a 1-token SmolLM2 forward
(8.7 of 29.3 ms). Here they are three calls:

* :func:`_add_norm`: ``x += delta`` (the residual, in place), then ``out = w * x / rms(x)``;
* :func:`_rope_write`: from the fused q/k/v product, RoPE on queries and keys, the queries laid out as
  attention takes them (each KV head's query heads stacked, ``[B, KV, g*L, d]``), keys and values written
  into their cache slots and laid out ``[B, KV, L, d]`` for a causal prefill;
* :func:`_silu_gate`: ``silu(gate) * up`` from the fused gate/up product.

Attention (``F.scaled_dot_product_attention``) and the products are called as before.

Every kernel computes each token on its own in a fixed order (the norm's sum of squares in 16 lanes, then a
fixed pairwise tree; no reassociation is allowed), so what they give a token does not depend on the call's
width, on the other rows or on the thread that ran it, as for the products. The results are the torch layer's
up to float32 rounding (``tests/test_fused_glue.py``).

SmolLM2, one token after a 100-token prefix: 23.7 ms per forward, 31.0 with the torch layer; 8 tokens 33.8 and
44.2; everything but the products 5.7 ms, where it was 8.7 (``python bench/forward_widths.py --paths
packed+fused packed+fused-torch-glue packed+fused-no-products``, ``bench/results/forward_widths_fused_glue.md``).
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch

from .blocked_gemm import match_threads

#: Lanes of the RMSNorm's partial sums of squares.
LANES = 16

_MATH = {"contract"}  # fused multiply-add, nothing reordered


@nb.njit(parallel=True, fastmath=_MATH, cache=True, nogil=True)
def _add_norm(x: np.ndarray, delta: np.ndarray, add: bool, w: np.ndarray, eps: np.float32,
              out: np.ndarray) -> None:  # pragma: no cover - compiled
    """For each row of ``x [N, D]`` (float32): ``x += delta`` when ``add``, then ``out = w * (x * (1 / sqrt(mean(x^2)
    + eps)))``. ``D`` is a multiple of :data:`LANES`."""
    N, D = x.shape
    for n in nb.prange(N):
        part = np.empty(LANES, x.dtype)
        if add:
            for c in range(D):
                x[n, c] += delta[n, c]
        for lane in range(LANES):
            part[lane] = x[n, lane] * x[n, lane]
        for c0 in range(LANES, D, LANES):
            for lane in range(LANES):
                part[lane] += x[n, c0 + lane] * x[n, c0 + lane]
        width = LANES // 2
        while width > 0:  # a fixed pairwise tree
            for lane in range(width):
                part[lane] += part[lane + width]
            width //= 2
        r = np.float32(1.0) / np.sqrt(part[0] / np.float32(D) + eps)
        for c in range(D):
            out[n, c] = w[c] * (x[n, c] * r)


@nb.njit(parallel=True, fastmath=_MATH, cache=True, nogil=True)
def _rope_write(qkv: np.ndarray, cos: np.ndarray, sin: np.ndarray, heads: int, kv_heads: int, rows: np.ndarray,
                slots: np.ndarray, kc: np.ndarray, vc: np.ndarray, q: np.ndarray, k: np.ndarray,
                v: np.ndarray) -> None:  # pragma: no cover - compiled
    """Token ``n = b*L + t`` of ``qkv [B*L, (H + 2 KV) d]``: RoPE (rotate-half, ``cos/sin [B*L, d]``) on its
    query and key heads; query head ``h = kv*g + j`` to ``q[b, kv, j*L + t]``; key and value head ``kv`` to
    ``kc/vc[rows[b], kv, slots[b, t]]`` and to ``k/v[b, kv, t]``."""
    B, L = slots.shape
    d = cos.shape[1]
    half = d // 2
    g = heads // kv_heads
    for n in nb.prange(B * L):
        b, t = n // L, n % L
        r, s = rows[b], slots[b, t]
        for h in range(heads + kv_heads):
            base = h * d
            if h < heads:
                dst = q[b, h // g, (h % g) * L + t]
            else:
                dst = k[b, h - heads, t]
            for c in range(half):
                dst[c] = qkv[n, base + c] * cos[n, c] - qkv[n, base + c + half] * sin[n, c]
            for c in range(half, d):
                dst[c] = qkv[n, base + c] * cos[n, c] + qkv[n, base + c - half] * sin[n, c]
            if h >= heads:
                kc[r, h - heads, s, :] = dst
        for h in range(kv_heads):
            base = (heads + kv_heads + h) * d
            for c in range(d):
                v[b, h, t, c] = qkv[n, base + c]
            vc[r, h, s, :] = v[b, h, t]


@nb.njit(parallel=True, fastmath=_MATH, cache=True, nogil=True)
def _silu_gate(gu: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """``out[n, c] = silu(gu[n, c]) * gu[n, m + c]`` for ``gu [N, 2m]``, ``out [N, m]``."""
    N, m = out.shape
    for n in nb.prange(N):
        for c in range(m):
            a = gu[n, c]
            out[n, c] = a / (np.float32(1.0) + np.exp(-a)) * gu[n, m + c]


class GlueCall:
    """What every layer of one call over the cache shares: the RoPE tables and the tokens' cache rows and slots as
    arrays, and the buffers the layers' kernels write (each layer's are consumed before the next one runs).

    Parameters
    ----------
    x:
        ``[B, L, hidden]`` the call's hidden states (contiguous float32).
    cos, sin:
        ``[B, L, d]`` RoPE tables.
    cached:
        The call's :class:`~graphrt.frontends.models.transformer.CachedCall`.
    heads, kv_heads:
        Query and KV heads per layer.
    intermediate:
        The MLP's width.
    """

    def __init__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cached, heads: int, kv_heads: int,
                 intermediate: int) -> None:
        B, L, D = x.shape
        d = cos.shape[-1]
        rows, _, slots = cached.index
        self.cos, self.sin = cos.reshape(B * L, d).numpy(), sin.reshape(B * L, d).numpy()
        self.rows, self.slots = rows[:B, 0, 0].contiguous().numpy(), slots[:B, :, 0].contiguous().numpy()
        self.h = torch.empty(B, L, D)  # a norm's output, a product's input
        self.q = torch.empty(B, heads, L, d)
        self.k, self.v = torch.empty(B, kv_heads, L, d), torch.empty(B, kv_heads, L, d)
        self.act = torch.empty(B, L, intermediate)
        self.h_np, self.act_np = self.h.view(B * L, D).numpy(), self.act.view(B * L, intermediate).numpy()
        self.q_np = self.q.view(B, kv_heads, heads // kv_heads * L, d).numpy()  # attention's grouped layout
        self.k_np, self.v_np = self.k.numpy(), self.v.numpy()


class LayerGlue:
    """A packed decoder layer run with its work between products fused (built once, by
    :func:`~graphrt.frontends.models.packed_linear.prepack`, for a layer whose q/k/v and gate/up are one packed
    product each, with no q/k norm and no query scale).

    Parameters
    ----------
    layer:
        The :class:`~graphrt.frontends.models.transformer.DecoderLayer`, already packed.
    """

    def __init__(self, layer: torch.nn.Module) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.attn = attn
        self.qkv, self.gate_up = attn.q_proj.product, mlp.gate_proj.product
        self.o_proj, self.down_proj = attn.o_proj, mlp.down_proj
        self.heads, self.kv_heads = attn.num_heads, attn.num_kv_heads
        self.intermediate = mlp.down_proj.in_features
        self.w_in, self.eps_in = layer.input_layernorm.weight.detach().numpy(), np.float32(layer.input_layernorm.eps)
        self.w_post = layer.post_attention_layernorm.weight.detach().numpy()
        self.eps_post = np.float32(layer.post_attention_layernorm.eps)

    def call(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cached) -> GlueCall:
        """The :class:`GlueCall` of a call (every layer of the model has this one's sizes)."""
        match_threads()
        return GlueCall(x, cos, sin, cached, self.heads, self.kv_heads, self.intermediate)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, adapter: torch.Tensor | None, cached,
                index: int, call: GlueCall) -> torch.Tensor:
        """:meth:`~graphrt.frontends.models.transformer.DecoderLayer.forward` over the cache: ``x [B, L, hidden]``
        (contiguous float32) is updated in place and returned; ``index`` is the layer's."""
        B, L, D = x.shape
        flat = x.view(B * L, D).numpy()
        _add_norm(flat, flat, False, self.w_in, self.eps_in, call.h_np)
        qkv = self.qkv.full(call.h, adapter)  # [B, L, (H + 2 KV) d]
        _rope_write(qkv.view(B * L, -1).numpy(), call.cos, call.sin, self.heads, self.kv_heads, call.rows,
                    call.slots, cached.k[index].numpy(), cached.v[index].numpy(), call.q_np, call.k_np, call.v_np)
        o = self.o_proj(self.attn.attend(call.q, call.k, call.v, mask, cached, index), adapter)  # [B, L, D]
        _add_norm(flat, o.view(B * L, D).numpy(), True, self.w_post, self.eps_post, call.h_np)
        _silu_gate(self.gate_up.full(call.h, adapter).view(B * L, -1).numpy(), call.act_np)
        return x.add_(self.down_proj(call.act, adapter))
