"""A packed decoder layer's work between its products, fused into Numba kernels (CPU, float32).

Once the products stream their weights near the machine's bandwidth
(:mod:`~graphrt.frontends.models.blocked_gemm`), what is left of a decode step is the layer's element-wise work:
two RMSNorms, the residual adds, RoPE on queries and keys, the K/V cache writes, SiLU and the gate product.
In torch these are about 45 calls per layer of a few microseconds each, a third of a 1-token SmolLM2 forward
(8.7 of 29.3 ms). Here they are:

* :func:`_add_norm`: ``x += delta`` (the previous layer's MLP output or this layer's attention output, in
  place), then ``out = w * x / rms(x)``;
* :func:`_rope_write`: from the fused q/k/v product, RoPE on queries and keys, the queries laid out as
  attention takes them (each KV head's query heads stacked, ``[B, KV, g*L, d]``), keys and values written
  into their cache slots and laid out ``[B, KV, L, d]`` for a causal prefill;
* :func:`_attention`: a call over the cache, of any width, attends over its rows' cache slots in place, its
  output laid out as ``o_proj`` reads it (a causal prefill of empty rows runs ``F.scaled_dot_product_attention``
  over its own tokens);
* :func:`_silu_gate`: ``silu(gate) * up`` from the fused gate/up product, the exponential a polynomial
  (:func:`_exp`) that vectorises.

The products are called on the call's buffers (:class:`GlueCall`), without the module path's checks, reshapes
and allocations, and each layer's MLP output is added to the hidden states by the next layer's first norm.

Every kernel computes each token on its own in a fixed order (the norm's sum of squares in 16 lanes, then a
fixed pairwise tree; no reassociation is allowed), so what they give a token does not depend on the call's
width, on the other rows or on the thread that ran it, as for the products; :func:`_attention`'s result for a
query depends on its own keys only (a masked key adds exactly zero). So a token's logits are the same bits in an
AR step, a verification block or a batch of streams, which lossless verification needs: SDPA gives a query
other bits beside other queries (11 of 32 queries differed between a call of one token and one of eight), and
this kernel's bits are not SDPA's. The price: on warm caches SDPA is faster from 8 query tokens on (on 2 cores,
one layer of SmolLM2, 8 tokens: 48 against 33 us over 100 keys, 127 against 68 over 300; one token: 16 against
19 and 34 against 29). Inside a forward, where the weights have flushed the cache, what counts is that each
chunk of keys and values is read once, front to back: 8 rows of one token over 400 cached keys spend 14.1 ms of
a 31.4 ms forward in attention, against 46.8 of 66.7 with the three-pass kernel this one replaced
(``python bench/decode_attention.py``, ``bench/results/decode_attention_split_keys.md``). The results are the
torch layer's up to float32 rounding (``tests/test_fused_glue.py``).

SmolLM2, one token after a 100-token prefix, in one run (streaming reads at 23.6 GB/s): 35.2 ms per forward,
47.2 with the torch layer; 16 tokens 57.4 and 75.4; everything but the products 3.5-5.1 ms at 2-16 tokens,
where the three-kernel glue of the previous release took 6.0-10.7 (``python bench/forward_widths.py --paths
packed+fused packed+fused-torch-glue packed+fused-no-products``, ``bench/results/forward_widths_decode_attention.md``;
the previous figures: ``forward_widths_fused_glue.md``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numba as nb
import numpy as np
import torch
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from .blocked_gemm import match_threads

KERNELS_DIGEST = hashlib.sha256(b"".join(Path(__file__).with_name(name).read_bytes()
                                          for name in ("blocked_gemm.py", "fused_glue.py"))).hexdigest()[:16]
"""The CPU kernels' source (products and glue): a cost measured with other kernels is measured again."""

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


@intrinsic
def _float_from_bits(typingctx, bits):  # pragma: no cover - compiled
    """The float32 whose IEEE-754 bits are the int32 ``bits``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@nb.njit(fastmath=_MATH, inline="always")
def _exp(x: np.float32) -> np.float32:  # pragma: no cover - compiled
    """``e**x`` in float32 for ``x`` clamped to ``[-87, 88]`` (Cephes' ``expf``: ``x = n ln 2 + r``, a degree-6
    polynomial for ``e**r``, ``2**n`` from its exponent bits), within 1e-7 relative of the exact value. Unlike
    ``np.exp`` (a libm call per element) it is plain arithmetic, which LLVM vectorises: the SiLU of a SmolLM2 MLP
    row, 1,536 elements, takes 5 us instead of 13."""
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    n = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
    r = x - n * np.float32(0.693359375)  # ln 2 in two parts, the first exact in float32
    r = r - n * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    return (p * r * r + r + np.float32(1.0)) * _float_from_bits(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))


@nb.njit(parallel=True, fastmath=_MATH, cache=True, nogil=True)
def _silu_gate(gu: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """``out[n, c] = silu(gu[n, c]) * gu[n, m + c]`` for ``gu [N, 2m]``, ``out [N, m]``."""
    N, m = out.shape
    for n in nb.prange(N):
        for c in range(m):
            a = gu[n, c]
            out[n, c] = a / (np.float32(1.0) + _exp(-a)) * gu[n, m + c]


#: Queries per tile of :func:`_attention`'s products (each key or value vector loaded once per tile).
QUERY_TILE = 4
#: Keys per task of :func:`_attention`: chunk ``c`` of a row is its keys ``c*64 .. c*64 + 63``, whatever the call.
KEY_CHUNK = 64


@nb.njit(parallel=True, fastmath=_MATH, cache=True, nogil=True)
def _attention(q: np.ndarray, kc: np.ndarray, vc: np.ndarray, rows: np.ndarray, keys: int, bias: np.ndarray,
               bias_rows: np.ndarray, scale: np.float32, part_o: np.ndarray, part_m: np.ndarray,
               part_l: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """Attention of grouped queries ``q [B, KV, G, d]`` (``G = g*L``: query ``j*L + t`` is head ``kv*g + j`` of
    token ``t``) over the first ``keys`` slots of their rows in the cache, ``kc/vc [R, KV, slots, d]`` at
    ``rows [B]``, with the additive mask ``bias[bias_rows[b], t, :keys]`` (0 or -inf), into ``out [B*L, H*d]``
    (``o_proj``'s input). ``part_o [B, KV, chunks, G, d]``, ``part_m`` and ``part_l [B, KV, chunks, G]`` are
    scratch, ``chunks = ceil(keys / KEY_CHUNK)``; ``d`` is a multiple of :data:`LANES`.

    Two parallel passes (split keys, as flash-decoding splits them):

    * by KV head and chunk of :data:`KEY_CHUNK` keys, everything the chunk gives its head's queries: the chunk's
      keys transposed once, the scores (each a sum over ``d`` in order, 16 keys at a time), the chunk's maximum
      and its softmax numerators and sum (in 16 lanes by key index, then a fixed tree), and the numerators times
      the chunk's values (each column a sum over the chunk's keys in order, a value row read whole and once);
    * by query, the chunks combined in order: each scaled by ``exp(its maximum - the largest)``, a chunk whose
      keys are all masked skipped.

    Each chunk's keys and values are read once, front to back, where the three passes of the previous kernel
    read every value row four times, 64 bytes of it at a time, from memory the weights had flushed it from. A
    chunk is a fixed range of key slots and a masked key adds exactly zero, so a query's result depends on its
    own keys only: not on the call's width or key span, the other rows, or how the work was split."""
    B, KV, G, d = q.shape
    L = out.shape[0] // B
    g = G // L
    chunks = (keys + KEY_CHUNK - 1) // KEY_CHUNK
    for task in nb.prange(B * KV * chunks):
        b, kv, ch = task // (KV * chunks), task // chunks % KV, task % chunks
        kb, vb, qb, bb = kc[rows[b], kv], vc[rows[b], kv], q[b, kv], bias[bias_rows[b]]  # [slots, d] [G, d]
        s0 = ch * KEY_CHUNK
        n = min(KEY_CHUNK, keys - s0)
        kt = np.empty((d, KEY_CHUNK), np.float32)  # the chunk's keys, transposed (the last repeated past n)
        for j in range(KEY_CHUNK):
            s = s0 + min(j, n - 1)
            for c in range(d):
                kt[c, j] = kb[s, c]
        e = np.empty((G, KEY_CHUNK), np.float32)  # scores, then softmax numerators
        acc = np.empty((QUERY_TILE, LANES), np.float32)
        for i in range(0, G, QUERY_TILE):
            q0, q1 = qb[i], qb[min(i + 1, G - 1)]
            q2, q3 = qb[min(i + 2, G - 1)], qb[min(i + 3, G - 1)]
            for j0 in range(0, KEY_CHUNK, LANES):
                acc[:] = 0.0
                for c in range(d):
                    x0, x1, x2, x3 = q0[c], q1[c], q2[c], q3[c]
                    for j in range(LANES):
                        w = kt[c, j0 + j]
                        acc[0, j] += x0 * w
                        acc[1, j] += x1 * w
                        acc[2, j] += x2 * w
                        acc[3, j] += x3 * w
                for u in range(min(QUERY_TILE, G - i)):
                    t = (i + u) % L
                    for j in range(LANES):
                        e[i + u, j0 + j] = acc[u, j] * scale + bb[t, s0 + j0 + j] if j0 + j < n else -np.inf
        lanes = np.empty(LANES, np.float32)
        for i in range(G):  # the chunk's maximum, numerators and sum
            row = e[i]
            for j in range(LANES):
                lanes[j] = row[j]
            for j0 in range(LANES, KEY_CHUNK, LANES):
                for j in range(LANES):
                    lanes[j] = max(lanes[j], row[j0 + j])
            top = lanes[0]
            for j in range(1, LANES):
                top = max(top, lanes[j])
            lanes[:] = 0.0
            for j0 in range(0, KEY_CHUNK, LANES):
                for j in range(LANES):
                    v = row[j0 + j]
                    x = _exp(v - top)
                    x = x if v != -np.inf else np.float32(0.0)  # a select, not a branch: the loop vectorises
                    row[j0 + j] = x
                    lanes[j] += x
            width = LANES // 2
            while width > 0:
                for j in range(width):
                    lanes[j] += lanes[j + width]
                width //= 2
            part_m[b, kv, ch, i], part_l[b, kv, ch, i] = top, lanes[0]
        po = part_o[b, kv, ch]  # [G, d]
        acc_o = np.empty((QUERY_TILE, d), np.float32)
        for i in range(0, G, QUERY_TILE):
            e0, e1 = e[i], e[min(i + 1, G - 1)]
            e2, e3 = e[min(i + 2, G - 1)], e[min(i + 3, G - 1)]
            acc_o[:] = 0.0
            for j in range(n):
                y0, y1, y2, y3 = e0[j], e1[j], e2[j], e3[j]
                vr = vb[s0 + j]
                for c in range(d):
                    w = vr[c]
                    acc_o[0, c] += y0 * w
                    acc_o[1, c] += y1 * w
                    acc_o[2, c] += y2 * w
                    acc_o[3, c] += y3 * w
            for u in range(min(QUERY_TILE, G - i)):
                po[i + u] = acc_o[u]
    for task in nb.prange(B * KV * G):  # the chunks combined, in order
        b, kv, i = task // (KV * G), task // G % KV, task % G
        top = np.float32(-np.inf)
        for ch in range(chunks):
            top = max(top, part_m[b, kv, ch, i])
        h, t = kv * g + i // L, i % L
        o = out[b * L + t, h * d:(h + 1) * d]
        o[:] = 0.0
        total = np.float32(0.0)
        for ch in range(chunks):
            m = part_m[b, kv, ch, i]
            if m == -np.inf:  # every key of the chunk masked for this query
                continue
            f = _exp(m - top)
            total += f * part_l[b, kv, ch, i]
            po = part_o[b, kv, ch, i]
            for c in range(d):
                o[c] += f * po[c]
        for c in range(d):
            o[c] /= total


class GlueCall:
    """What every layer of one call over the cache shares: the RoPE tables and the tokens' cache rows and slots as
    arrays, and the buffers the layers' kernels and products write (each layer's are consumed before the next one
    runs; the last layer's down projection is added to the hidden states by :meth:`finish`).

    Parameters
    ----------
    x:
        ``[B, L, hidden]`` the call's hidden states (contiguous float32).
    cos, sin:
        ``[B, L, d]`` RoPE tables.
    cached:
        The call's :class:`~graphrt.frontends.models.transformer.CachedCall`.
    mask:
        The call's grouped mask ``[B', 1, g*L, keys]`` (``B'`` rows laid out, see ``cached.spread``), or None.
    adapter:
        ``[B, L]`` bool, the tokens the drafter's LoRA applies to, or None.
    heads, kv_heads:
        Query and KV heads per layer.
    intermediate:
        The MLP's width.
    """

    def __init__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cached, mask: torch.Tensor | None,
                 adapter: torch.Tensor | None, heads: int, kv_heads: int, intermediate: int) -> None:
        B, L, D = x.shape
        N, d = B * L, cos.shape[-1]
        # The tokens the drafter's LoRA applies to, flat (None: a call without draft tokens).
        self.select = None if adapter is None else adapter.reshape(N).contiguous().numpy()
        # A call over the cache attends with :func:`_attention` (for a head size of whole 16-lane blocks), a
        # causal prefill of empty rows with SDPA over its own tokens.
        self.fused_attention = not cached.causal and d % LANES == 0
        if self.fused_attention:
            self.keys, self.scale = cached.keys, np.float32(1.0 / np.sqrt(d))
            G = heads // kv_heads * L
            chunks = -(-self.keys // KEY_CHUNK)
            self.part_o = np.empty((B, kv_heads, chunks, G, d), np.float32)  # _attention's per-chunk results
            self.part_m, self.part_l = np.empty((2, B, kv_heads, chunks, G), np.float32)
            if mask is None:
                self.bias, self.bias_rows = np.zeros((1, L, self.keys), np.float32), np.zeros(B, np.int64)
            else:
                self.bias = torch.zeros(mask.shape[0], L, self.keys).masked_fill_(~mask[:, 0, :L], -np.inf).numpy()
                self.bias_rows = (cached.spread if cached.spread is not None else torch.arange(B)).numpy()
            self.heads_np = np.empty((N, heads * d), np.float32)  # attention's output, o_proj's input
        rows, _, slots = cached.index
        self.cos, self.sin = cos.reshape(N, d).numpy(), sin.reshape(N, d).numpy()
        self.rows, self.slots = rows[:B, 0, 0].contiguous().numpy(), slots[:B, :, 0].contiguous().numpy()
        self.h_np = np.empty((N, D), np.float32)  # a norm's output, a product's input
        self.qkv_np = np.empty((N, (heads + 2 * kv_heads) * d), np.float32)
        self.o_np = np.empty((N, D), np.float32)  # o_proj's output
        self.gate_up_np = np.empty((N, 2 * intermediate), np.float32)
        self.act_np = np.empty((N, intermediate), np.float32)  # silu(gate) * up, down_proj's input
        self.down = torch.empty(B, L, D)  # down_proj's output (added to the hidden states by the next norm)
        self.down_np = self.down.view(N, D).numpy()
        self.q = torch.empty(B, heads, L, d)  # SDPA's inputs (wider calls)
        self.k, self.v = torch.empty(B, kv_heads, L, d), torch.empty(B, kv_heads, L, d)
        self.q_np = self.q.view(B, kv_heads, heads // kv_heads * L, d).numpy()  # attention's grouped layout
        self.k_np, self.v_np = self.k.numpy(), self.v.numpy()
        self.pending = False  # ``down`` holds the last layer's MLP output, not yet added to the hidden states

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the last layer's MLP output added (in place): the stack's output."""
        if self.pending:
            x.add_(self.down)
            self.pending = False
        return x


class _Product:
    """A packed projection (or fused group) called on arrays: ``y = x @ W.T`` into a caller's buffer, then its
    LoRA where selected. Per call this skips the checks, reshapes and allocations of the module's path: 10 us of
    its 14 on a small product, 1.2 ms of a 1-token SmolLM2 forward."""

    def __init__(self, owner) -> None:
        self.owner = owner  # a PackedLinear or FusedProduct: its ``packed`` weight and ``lora``

    def __call__(self, x: np.ndarray, y: np.ndarray, select: np.ndarray | None) -> None:
        """``y = x @ W.T``, then ``y += `` the LoRA's delta on the rows where ``select`` (bool ``[N]``, or None)."""
        owner = self.owner
        owner.packed.into(x, y)
        if owner.lora is not None and select is not None:
            owner.lora.add_arrays(x, y, select)


class LayerGlue:
    """A packed decoder layer run with its work between products fused and its products called on the call's
    buffers (built once, by :func:`~graphrt.frontends.models.packed_linear.prepack`, for a layer whose q/k/v and
    gate/up are one packed product each, with no bias, no q/k norm, no query scale and widths that are whole
    blocks of the product).

    Parameters
    ----------
    layer:
        The :class:`~graphrt.frontends.models.transformer.DecoderLayer`, already packed.
    """

    def __init__(self, layer: torch.nn.Module) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.attn = attn
        self.qkv, self.gate_up = _Product(attn.q_proj.product), _Product(mlp.gate_proj.product)
        self.o_proj, self.down_proj = _Product(attn.o_proj), _Product(mlp.down_proj)
        self.heads, self.kv_heads = attn.num_heads, attn.num_kv_heads
        self.intermediate = mlp.down_proj.in_features
        self.w_in, self.eps_in = layer.input_layernorm.weight.detach().numpy(), np.float32(layer.input_layernorm.eps)
        self.w_post = layer.post_attention_layernorm.weight.detach().numpy()
        self.eps_post = np.float32(layer.post_attention_layernorm.eps)
        self._cache: tuple = (None, None, None, None)  # this layer's K/V storage and its arrays

    def call(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cached, mask: torch.Tensor | None,
             adapter: torch.Tensor | None) -> GlueCall:
        """The :class:`GlueCall` of a call (every layer of the model has this one's sizes)."""
        match_threads()
        return GlueCall(x, cos, sin, cached, mask, adapter, self.heads, self.kv_heads, self.intermediate)

    def _cache_arrays(self, cached, index: int) -> tuple[np.ndarray, np.ndarray]:
        """This layer's K/V storage as arrays (converted again only when the storage changes)."""
        k, v = cached.k[index], cached.v[index]
        if k is not self._cache[0] or v is not self._cache[1]:
            self._cache = (k, v, k.numpy(), v.numpy())
        return self._cache[2], self._cache[3]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, adapter: torch.Tensor | None, cached,
                index: int, call: GlueCall) -> torch.Tensor:
        """:meth:`~graphrt.frontends.models.transformer.DecoderLayer.forward` over the cache: ``x [B, L, hidden]``
        (contiguous float32) is updated in place and returned, the layer's MLP output left in ``call.down`` for
        the next layer's norm to add (:meth:`GlueCall.finish` adds the last one); ``index`` is the layer's."""
        B, L, D = x.shape
        flat = x.view(B * L, D).numpy()
        _add_norm(flat, call.down_np, call.pending, self.w_in, self.eps_in, call.h_np)
        self.qkv(call.h_np, call.qkv_np, call.select)  # [B*L, (H + 2 KV) d]
        kc, vc = self._cache_arrays(cached, index)
        _rope_write(call.qkv_np, call.cos, call.sin, self.heads, self.kv_heads, call.rows, call.slots, kc, vc,
                    call.q_np, call.k_np, call.v_np)
        if call.fused_attention:
            _attention(call.q_np, kc, vc, call.rows, call.keys, call.bias, call.bias_rows, call.scale, call.part_o,
                       call.part_m, call.part_l, call.heads_np)
            heads = call.heads_np
        else:
            heads = self.attn.attend(call.q, call.k, call.v, mask, cached, index).contiguous().view(B * L, -1).numpy()
        self.o_proj(heads, call.o_np, call.select)
        _add_norm(flat, call.o_np, True, self.w_post, self.eps_post, call.h_np)
        self.gate_up(call.h_np, call.gate_up_np, call.select)
        _silu_gate(call.gate_up_np, call.act_np)
        self.down_proj(call.act_np, call.down_np, call.select)
        call.pending = True
        return x
