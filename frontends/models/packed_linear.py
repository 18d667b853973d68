"""Prepacked linear layers for CPU inference: the weights laid out once, at load time, for a product that reads
them from memory once per call at any width.

A float32 decode step on CPU is bound by reading the weights (SmolLM2-135M reads 538 MB per
forward). ``F.linear`` on a plain ``[out, in]`` weight reaches about half the machine's streaming
bandwidth at one row and slows further at 2..16 rows (MKL's small-``M`` GEMM takes another path),
so a forward's cost grows with its width. :mod:`~graphrt.frontends.models.blocked_gemm` lays each weight out
once in blocks of 16 output columns and streams it once per call for any number of rows, each row's result
the same bit for bit at every row count (what lossless speculative decoding needs of a token's logits).

:func:`prepack` swaps every projection of a :class:`~graphrt.frontends.models.transformer.Transformer`
(and its output head) for a :class:`PackedLinear` holding only the packed weight: inference only,
no autograd, float32 on CPU. Results equal ``F.linear``'s up to float32 rounding (the summation
order differs). The plain model is what :func:`prepack` is not called on (``linear="eager"`` in
:func:`graphrt.load`).
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np
import torch
from torch import nn

from .blocked_gemm import LANES as BLOCK_LANES
from .blocked_gemm import BlockedWeight, lora_add, match_threads
from .config import ModelConfig
from .fused_glue import LANES as GLUE_LANES
from .fused_glue import LayerGlue

#: Linear-layer implementations :func:`graphrt.load` accepts.
LINEAR_PATHS = ("auto", "eager", "packed")


def packing_available(dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether :func:`prepack` can pack weights of ``dtype`` on ``device`` (float32 on the CPU)."""
    return torch.device(device).type == "cpu" and dtype == torch.float32


def resolve_linear(linear: str, dtype: torch.dtype, device: torch.device | str, compile: bool | str = False) -> str:
    """The linear-layer path a backbone runs: ``"eager"`` or ``"packed"``.

    Parameters
    ----------
    linear:
        ``"auto"`` (packed where it applies: float32 on the CPU, not compiled -- a compiled stack gets
        its weights laid out by inductor's freezing instead), ``"eager"`` (``F.linear`` on the stored
        weights, what training uses) or ``"packed"`` (an error where it cannot apply).
    dtype, device:
        The model's.
    compile:
        The backbone's ``compile`` setting.

    Returns
    -------
    str
        ``"eager"`` or ``"packed"``.
    """
    if linear not in LINEAR_PATHS:
        raise ValueError(f"linear: expected one of {LINEAR_PATHS}, found {linear!r}")
    if linear == "eager":
        return "eager"
    ok = packing_available(dtype, device) and not compile
    if linear == "packed" and not ok:
        raise ValueError(f"linear='packed': expected a float32 model on the CPU and compile=False, found {dtype} "
                         f"on {device}, compile={compile!r}; use linear='eager' or 'auto'")
    return "packed" if ok else "eager"


class PackedLinear(nn.Module):
    """An inference-only stand-in for ``nn.Linear`` / ``LoRALinear`` with a packed weight.

    Parameters
    ----------
    linear:
        The layer to replace: its ``weight [out, in]`` (and ``bias [out]``) are packed; its LoRA
        (``lora_A``, ``lora_B``, ``lora_scale``), if any, becomes a :class:`PackedLoRA`, added
        where ``select`` is True as ``LoRALinear`` adds it.

    Notes
    -----
    The packed weight (a :class:`~graphrt.frontends.models.blocked_gemm.BlockedWeight`) is not a parameter,
    not in the state dict, not movable between devices. Call with ``x [..., in]`` float32 on the CPU.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = BlockedWeight(linear.weight, "PackedLinear")
        self.bias = None if linear.bias is None else linear.bias.detach().clone()  # [out]
        self.lora = PackedLoRA.of([linear])

    def forward(self, x: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        """``x [..., in]``, ``select [...]`` bool or None -> ``[..., out]``."""
        out = self.packed(x, self.bias)
        if self.lora is not None and select is not None:
            self.lora.add_(x, out, select)
        return out

    def extra_repr(self) -> str:
        lora = "" if self.lora is None else f", LoRA rank {self.lora.rank}"
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=blocked{lora}"


class PackedLoRA:
    """The LoRAs of projections that read one input: ``out += scale * B (A x)`` where selected.

    Projection ``i``'s LoRA adds ``scale_i * B_i A_i x``. The ``A_i [r_i, in]`` are stacked into one
    ``[sum r, in]`` matrix and the ``B_i`` (scale folded in) into one block-diagonal ``[sum out, sum r]``
    one, both laid out as the blocked product lays out its weights: the group's LoRA is two blocked products
    and a masked add (:func:`~graphrt.frontends.models.blocked_gemm.lora_add`). On a CPU an adapter's cost is
    its calls' dispatch more than its arithmetic: in torch a q/k/v group made five calls (a product, a mask, one
    ``addmm_`` per projection), and SmolLM2's rank-32 drafter added 11-12 ms to a 42-50 ms forward; with these
    calls on the fused glue's arrays it adds 5.5-6.3 ms to 39-45 (``python bench/adapter_cost.py``). (A kernel
    where each column block of ``B`` reads only its own projection's LoRA inputs was slower than the blocked
    product over the zeros.)

    Rows not selected are not touched, so their output is the base projection's, bit for bit.
    """

    def __init__(self, linears: list[nn.Linear]) -> None:
        adapted, deltas = [], []
        r0 = o0 = 0
        for lin in linears:
            if getattr(lin, "lora_A", None) is not None:
                r = lin.lora_A.out_features
                adapted.append(lin.lora_A.weight.detach())
                deltas.append((r0, o0, lin.lora_B.weight.detach() * lin.lora_scale))  # [out, r]
                r0 += r
            o0 += lin.out_features
        self.rank = r0
        b = torch.zeros(o0, -(-r0 // BLOCK_LANES) * BLOCK_LANES)  # block-diagonal: each projection's columns
        # read its own LoRA inputs only; as wide as the blocked A's output (zero columns past the rank)
        for r_start, o_start, w in deltas:
            b[o_start:o_start + w.shape[0], r_start:r_start + w.shape[1]] = w
        self.a = BlockedWeight(adapted, "PackedLoRA A")  # [sum r, in]
        self.b = BlockedWeight(b, "PackedLoRA B")  # [sum out, sum r]

    @classmethod
    def of(cls, linears: list[nn.Linear]) -> "PackedLoRA | None":
        """The LoRAs of ``linears`` (``LoRALinear``'s ``lora_A``, ``lora_B``, ``lora_scale``); None if none has one."""
        if not any(getattr(lin, "lora_A", None) is not None for lin in linears):
            return None
        return cls(linears)

    def add_(self, x: torch.Tensor, out: torch.Tensor, select: torch.Tensor) -> None:
        """``out [..., sum out]`` (contiguous float32) ``+=`` the LoRA delta of ``x [..., in]`` where
        ``select [...]``."""
        x2 = x.reshape(-1, x.shape[-1]).contiguous()  # [N, in]
        match_threads()
        self.add_arrays(x2.numpy(), out.view(-1, out.shape[-1]).numpy(), select.reshape(-1).contiguous().numpy())

    def add_arrays(self, x: np.ndarray, out: np.ndarray, select: np.ndarray) -> None:
        """:meth:`add_` on C-contiguous arrays ``x [N, in]``, ``out [N, sum out]`` and bool ``select [N]``, on the
        threads :func:`~graphrt.frontends.models.blocked_gemm.match_threads` last set."""
        lora_add(x, select, self.a, self.b, out)


class FusedProduct:
    """One packed product for several projections of the same input (q/k/v, gate/up).

    The projections' weights are stacked into one ``[sum(out), in]`` matrix, so a layer reads
    them in one pass and pays one call's overhead; their LoRAs, if any, are one
    :class:`PackedLoRA`. The product is kept only until every projection has taken its columns:
    the projections after the first one to be called with the same tensors (same objects,
    unmodified since: same ``_version``) reuse it, and the last one releases it. (Kept longer, a
    prefill's products would stay resident after the call: 30 layers x ``tokens x 4,032`` floats
    for SmolLM2, 1 GB for 2,000 prompt tokens.) A projection called again, or out of turn,
    recomputes the product: the result is the same, only slower.
    """

    def __init__(self, linears: list[nn.Linear]) -> None:
        biases = [lin.bias for lin in linears]
        self.packed = BlockedWeight([lin.weight for lin in linears], "FusedProduct")  # [sum(out), in]
        self.bias = None if all(b is None for b in biases) else torch.cat(
            [b.detach() if b is not None else torch.zeros(lin.out_features) for b, lin in zip(biases, linears)])
        self.lora = PackedLoRA.of(linears)
        self.parts = len(linears)  # projections that take columns of each product
        self._key: tuple[torch.Tensor, int, torch.Tensor | None, int] | None = None
        self._out: torch.Tensor | None = None
        self._served = 0  # projections that have taken the kept product

    def __call__(self, x: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        """``x [..., in]``, ``select [...]`` bool or None -> ``[..., sum(out)]``."""
        if self.lora is None:
            select = None
        if self._kept(x, select):
            out = self._out
        else:
            out = self.full(x, select)
            self._out, self._served = out, 0
            self._key = (x, x._version, select, -1 if select is None else select._version)
        self._served += 1
        if self._served >= self.parts:  # every projection has its columns: hold nothing between calls
            self.release()
        return out

    def full(self, x: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        """``x [..., in]``, ``select [...]`` bool or None -> ``[..., sum(out)]``: every projection's columns at
        once, kept for none (what a caller that takes them together uses)."""
        out = self.packed(x, self.bias)
        if self.lora is not None and select is not None:
            self.lora.add_(x, out, select)
        return out

    def _kept(self, x: torch.Tensor, select: torch.Tensor | None) -> bool:
        """Whether the kept product is the one of ``x`` and ``select``."""
        if self._key is None:
            return False
        kx, kxv, ks, ksv = self._key
        return kx is x and kxv == x._version and ks is select and (select is None or ksv == select._version)

    def release(self) -> None:
        """Drop the kept input and product."""
        self._key = self._out = None


class PackedSlice(nn.Module):
    """One projection of a :class:`FusedProduct`: columns ``[start, stop)`` of its product (its LoRA
    included); a drop-in for the ``nn.Linear`` it replaces."""

    def __init__(self, product: FusedProduct, start: int, linear: nn.Linear) -> None:
        super().__init__()
        self.product = product
        self.start, self.stop = start, start + linear.out_features
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        """``x [..., in]``, ``select [...]`` bool or None -> ``[..., out]`` (a view of the fused product)."""
        return self.product(x, select)[..., self.start:self.stop]  # [..., out]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"fused columns [{self.start}, {self.stop}), packed=blocked")


#: Projections of one block that read the same input, packed as one matrix when ``fuse``.
_FUSED = {"self_attn": (("q_proj", "k_proj", "v_proj"), ("o_proj",)),
          "mlp": (("gate_proj", "up_proj"), ("down_proj",))}


_MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim the range now (clean file pages are dropped, read again if touched)
_LIBC = ctypes.CDLL(None) if sys.platform == "linux" else None


def _page_out(weight: torch.Tensor) -> None:
    """Ask the kernel to drop ``weight``'s pages from this process's resident memory (a hint; Linux only, a
    no-op elsewhere, for a non-contiguous tensor, or where the kernel declines).

    A checkpoint's tensors are views of the file's memory map, which stays mapped, and every page read from
    it resident, until the last tensor of the file is gone. Packing reads each weight once, so without this
    the whole file and every packed copy are resident together (loading SmolLM2 peaked at 1.56 GB; 1.15 GB
    with this). A clean file page paged out is read again from the file if it is ever touched (an anonymous
    one goes to swap, or stays where there is none), so this changes resident memory, never a value.
    """
    if _LIBC is None or not weight.is_contiguous():
        return
    first, end = weight.data_ptr(), weight.data_ptr() + weight.numel() * weight.element_size()
    start = -(-first // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the tensor only
    stop = end // mmap.PAGESIZE * mmap.PAGESIZE
    if stop > start:
        _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(stop - start), ctypes.c_int(_MADV_PAGEOUT))


def _glue_fusable(layer: nn.Module, config: ModelConfig) -> bool:
    """Whether :class:`~graphrt.frontends.models.fused_glue.LayerGlue` can run a packed ``layer`` of a model
    with ``config``: q/k/v and gate/up one product each, every product without bias and a whole number of the
    product's column blocks wide, no q/k norm, no query scale, sizes its kernels take."""
    attn, mlp = layer.self_attn, layer.mlp
    if not (isinstance(attn.q_proj, PackedSlice) and isinstance(mlp.gate_proj, PackedSlice)
            and isinstance(attn.o_proj, PackedLinear) and isinstance(mlp.down_proj, PackedLinear)):
        return False
    products = (attn.q_proj.product, attn.o_proj, mlp.gate_proj.product, mlp.down_proj)
    return (attn.k_proj.product is attn.q_proj.product and attn.v_proj.product is attn.q_proj.product
            and mlp.up_proj.product is mlp.gate_proj.product
            and all(p.bias is None and p.packed.out_features % BLOCK_LANES == 0 for p in products)
            and attn.q_norm is None and config.query_scale_beta is None
            and config.hidden_size % GLUE_LANES == 0 and attn.head_dim % 2 == 0)


def prepack(model: nn.Module, fuse: bool = True) -> nn.Module:
    """Swap ``model``'s projections and output head for packed ones (:class:`PackedLinear`), in place.

    Every decoder layer's ``q/k/v/o_proj`` and ``gate/up/down_proj`` and the model's
    ``diffusion_head`` are replaced; with ``fuse``, q/k/v and gate/up each become one packed
    matrix (:class:`FusedProduct`) read once per call, and a layer whose products are fused (and that has no
    q/k norm or query scale) gets a :class:`~graphrt.frontends.models.fused_glue.LayerGlue`: its calls over the
    cache run the work between the products as fused kernels. The embedding (shared with a tied head) stays as
    is. The replaced weights are released unless something else holds them, so the model
    is for inference only afterwards. Each projection's pages are paged out of the file's map once
    packed (:func:`_page_out`), so the file and the packed copies are never resident together. The
    embedding stays where it is, paged out once the head is packed: in a memory-mapped checkpoint a
    lookup then reads back only its rows' pages, so resident memory is the packed weights plus the rows
    in use (SmolLM2: 540 MB of packed weights, where a resident embedding added its 113 MB). The other
    parameters left (norms, LoRA) are copied out of the map.

    Before / after (one layer, ``fuse=True``)::

        q_proj: Linear(576, 576)         q_proj: PackedSlice(fused columns [0, 576))
        k_proj: Linear(576, 192)   ->    k_proj: PackedSlice(fused columns [576, 768))
        v_proj: Linear(576, 192)         v_proj: PackedSlice(fused columns [768, 960))
        o_proj: LoRALinear(576, 576)     o_proj: PackedLinear(576, 576) (its LoRA kept)

    Parameters
    ----------
    model:
        A :class:`~graphrt.frontends.models.transformer.Transformer` in float32 on the CPU.
    fuse:
        Stack the projections that share an input (q/k/v, gate/up) into one matrix each.

    Returns
    -------
    nn.Module
        ``model`` itself.
    """
    head = model.diffusion_head
    if not packing_available(head.weight.dtype, head.weight.device):
        raise ValueError(f"prepack: expected a float32 model on the CPU, found {head.weight.dtype} on "
                         f"{head.weight.device}")
    for layer in model.encoder.layers:
        for block_name, groups in _FUSED.items():
            block = getattr(layer, block_name)
            for group in groups:
                linears = [getattr(block, name, None) for name in group]
                if not all(isinstance(lin, nn.Linear) for lin in linears):
                    continue  # already packed, or not a plain projection (left as is)
                if fuse and len(group) > 1:
                    product, start = FusedProduct(linears), 0
                    for name, lin in zip(group, linears):
                        setattr(block, name, PackedSlice(product, start, lin))
                        start += lin.out_features
                else:
                    for name, lin in zip(group, linears):
                        setattr(block, name, PackedLinear(lin))
                for lin in linears:  # read once, packed: out of resident memory before the next layer is read
                    _page_out(lin.weight)
    model.diffusion_head = PackedLinear(head)
    embedding = model.encoder.embed_tokens.weight
    _page_out(head.weight)  # tied, the embedding: a lookup reads back only the pages of the rows it takes
    model.requires_grad_(False)
    for param in model.parameters():  # the rest out of the checkpoint's memory map (the embedding stays there)
        if param is not embedding:
            param.data = param.data.clone()
    for layer in model.encoder.layers:  # after the copies: the glue reads the norms' weights as arrays, in place
        layer.glue = LayerGlue(layer) if _glue_fusable(layer, model.config) else None
    return model


__all__ = ["LINEAR_PATHS", "FusedProduct", "PackedLinear", "PackedLoRA", "PackedSlice",
           "packing_available", "prepack", "resolve_linear"]
