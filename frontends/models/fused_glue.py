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

SmolLM2, one token after a 100-token prefix: 29.1 ms per forward, 33.9 with the torch layer; 8 tokens 34.9 and
43.0 (``python bench/forward_widths.py --paths packed+fused packed+fused-torch-glue``).
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch

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


def layer_forward(layer: torch.nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  mask: torch.Tensor | None, adapter: torch.Tensor | None, cached, index: int) -> torch.Tensor:
    """:meth:`~graphrt.frontends.models.transformer.DecoderLayer.forward` of a layer over the
    cache, with the work between its products in the kernels above. The layer is one
    :func:`~graphrt.frontends.models.packed_linear.prepack` marked ``fused_glue`` (q/k/v and gate/up each one
    packed product, no q/k norm, no query scale). ``x [B, L, hidden]`` (contiguous float32) is updated in place
    and returned."""
    attn, mlp = layer.self_attn, layer.mlp
    B, L, D = x.shape
    H, KV, d = attn.num_heads, attn.num_kv_heads, attn.head_dim
    flat = x.view(B * L, D).numpy()
    h = torch.empty(B, L, D)
    _add_norm(flat, flat, False, layer.input_layernorm.weight.detach().numpy(),
              np.float32(layer.input_layernorm.eps), h.view(B * L, D).numpy())
    qkv = attn.q_proj.product.full(h, adapter)  # [B, L, (H + 2 KV) d]
    q, k, v = torch.empty(B, H, L, d), torch.empty(B, KV, L, d), torch.empty(B, KV, L, d)
    rows, _, slots = cached.index
    _rope_write(qkv.view(B * L, -1).numpy(), cos.reshape(B * L, d).numpy(), sin.reshape(B * L, d).numpy(), H, KV,
                rows[:B, 0, 0].contiguous().numpy(), slots[:B, :, 0].contiguous().numpy(),
                cached.k[index].numpy(), cached.v[index].numpy(), q.view(B, KV, H // KV * L, d).numpy(),
                k.numpy(), v.numpy())
    o = attn.o_proj(attn.attend(q, k, v, mask, cached, index), adapter)  # [B, L, D]
    _add_norm(flat, o.view(B * L, D).numpy(), True, layer.post_attention_layernorm.weight.detach().numpy(),
              np.float32(layer.post_attention_layernorm.eps), h.view(B * L, D).numpy())
    gu = mlp.gate_proj.product.full(h, adapter)  # [B, L, 2m]
    act = torch.empty(B, L, gu.shape[-1] // 2)
    _silu_gate(gu.view(B * L, -1).numpy(), act.view(B * L, -1).numpy())
    return x.add_(mlp.down_proj(act, adapter))
