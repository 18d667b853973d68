"""The contenders of the side-by-side benchmark, each behind one ``run(prompts, max_new)`` call.

* :class:`GraphrtContender` -- graphrt's public API: a :class:`graphrt.Session` with one
  request per prompt, a compiled policy of one mode, eager or ``compile=True`` backbone.
* :class:`HandLoopContender` -- the overhead reference: a minimal greedy loop that calls
  graphrt's own backbone (``TransformerBackbone.forward(ForwardBatch)``) directly.
* :class:`TransformersContender` -- ``transformers`` ``generate`` on the same weights,
  written as a ``MistralForCausalLM``: as a user runs it by default (dynamic cache, SDPA),
  or in its fastest documented configuration (static cache + ``torch.compile``).
* :class:`ReferenceLoopContender` -- block diffusion and linear self-speculation written
  the way the model's published reference code runs them: a transformers model called
  once per forward with its ``DynamicCache``, which is cropped after read-only forwards.

Every contender records each backbone call's width and wall time through
:class:`ForwardTimer`, so the benchmark can report milliseconds per forward by width
and the share of wall time spent outside forwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

import graphrt
from graphrt.backbone import ForwardBatch

REFERENCE_MODES = ("diffusion", "self-spec")


# ----------------------------------------------------------------------------- timing
@dataclass
class ForwardTimer:
    """Records ``(rows, width, seconds)`` of every call of a wrapped forward.

    Wrap with :meth:`wrap` (the instance attribute ``forward`` of a backbone or a
    transformers model is replaced, so every caller goes through it) and undo with
    :meth:`unwrap`.
    """

    calls: list[tuple[int, int, float]] = field(default_factory=list)

    def wrap(self, owner: Any, shape_of: Callable[..., tuple[int, int]]) -> None:
        """Replace ``owner.forward`` by a timed version; ``shape_of(*args, **kwargs)`` gives (rows, width)."""
        inner = owner.forward

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            self.calls.append((*shape_of(*args, **kwargs), time.perf_counter() - t0))
            return out

        self._owner, self._own_attr = owner, owner.__dict__.get("forward")
        owner.forward = timed

    def unwrap(self) -> None:
        """Restore the wrapped forward (the instance's own, or the class's)."""
        if self._own_attr is None:
            del self._owner.forward
        else:
            self._owner.forward = self._own_attr

    @property
    def seconds(self) -> float:
        """Total wall time inside the forward."""
        return sum(c[2] for c in self.calls)


def _batch_shape(batch: ForwardBatch) -> tuple[int, int]:
    return tuple(batch.tokens.shape)  # type: ignore[return-value]


def _hf_shape(*args: Any, **kwargs: Any) -> tuple[int, int]:
    ids = kwargs.get("input_ids", args[0] if args else None)
    return tuple(ids.shape)  # type: ignore[union-attr]


@dataclass
class RunOutput:
    """What one contender produced for one prompt group."""

    tokens: list[list[int]]
    forwards: int  # backbone forwards, counted once per request they served (docs/design.md's TPF)
    seconds: float
    calls: list[tuple[int, int, float]]


# ----------------------------------------------------------------------------- graphrt
class GraphrtContender:
    """graphrt's public API: one :class:`graphrt.Session` per prompt group.

    Parameters
    ----------
    model:
        A loaded :class:`graphrt.Model` (eager or ``compile=True``).
    mode:
        A mode name (``ar``, ``diffusion``, ``self-spec``, ``self-spec-quadratic``).
    backend:
        ``"eager"`` or ``"compiled"`` (a label).
    threshold:
        The diffusion commit threshold (default 0.9); ignored by the other modes.
    """

    def __init__(self, model: graphrt.Model, mode: str, backend: str, threshold: float | None = None) -> None:
        self.model, self.mode, self.backend = model, mode, backend
        self.name = f"graphrt {backend}"
        self.policy = graphrt.compile(mode, model, threshold=threshold if mode == "diffusion" else None)

    def run(self, prompts: list[list[int]], max_new: int) -> RunOutput:
        """Decode every prompt in one session (one packed backbone call per round)."""
        timer = ForwardTimer()
        timer.wrap(self.model.backbone, _batch_shape)
        try:
            t0 = time.perf_counter()
            session = graphrt.Session(self.model.backbone)
            params = graphrt.GenerationParams(max_new_tokens=max_new, ignore_eos=True)
            ids = [session.add(self.policy, p, params) for p in prompts]
            results = session.run()
            seconds = time.perf_counter() - t0
        finally:
            timer.unwrap()
        return RunOutput([results[i].tokens for i in ids], sum(results[i].forwards for i in ids), seconds,
                         timer.calls)


class HandLoopContender:
    """A minimal greedy loop straight over graphrt's backbone: the runtime-overhead reference.

    Prefill writes the prompts' K/V, then one causal 1-token forward per step; the
    mask token is never predicted (as in graphrt's policies), so the tokens equal
    graphrt AR's.
    """

    def __init__(self, model: graphrt.Model, backend: str) -> None:
        self.model, self.backend, self.mode = model, backend, "ar"
        self.name = f"hand loop {backend}"

    def run(self, prompts: list[list[int]], max_new: int) -> RunOutput:
        """Greedy-decode ``max_new`` tokens for every prompt (equal lengths), batched."""
        bb = self.model.backbone
        mask_id = bb.config.mask_token_id
        timer = ForwardTimer()
        timer.wrap(bb, _batch_shape)
        t0 = time.perf_counter()
        rows = bb.alloc_rows(len(prompts))
        try:
            tokens = torch.tensor(prompts, dtype=torch.int64)  # [B, P]
            B, P = tokens.shape
            ones = torch.ones(B, P, dtype=torch.bool)
            causal = torch.ones(P, P, dtype=torch.bool).tril().expand(B, P, P).clone()  # [B, P, P]
            logits = bb.forward(ForwardBatch(rows=rows, tokens=tokens, positions=torch.arange(P).expand(B, P).clone(),
                                             attention=causal, kind="causal", kv_write=ones,
                                             adapter=torch.zeros_like(ones), valid=ones, logits="last"))  # [B, 1, V]
            one = torch.ones(B, 1, dtype=torch.bool)
            one_attn, no_adapter = torch.ones(B, 1, 1, dtype=torch.bool), torch.zeros(B, 1, dtype=torch.bool)
            out = torch.empty(B, max_new, dtype=torch.int64)
            ban = torch.tensor([mask_id])
            for i in range(max_new):
                out[:, i] = logits[:, -1].index_fill(1, ban, float("-inf")).argmax(-1)  # [B]
                if i + 1 == max_new:
                    break
                pos = torch.full((B, 1), P + i, dtype=torch.int64)
                logits = bb.forward(ForwardBatch(rows=rows, tokens=out[:, i:i + 1].clone(), positions=pos,
                                                 attention=one_attn, kind="causal", kv_write=one,
                                                 adapter=no_adapter, valid=one))  # [B, 1, V]
        finally:
            bb.free_rows(rows)
            timer.unwrap()
        seconds = time.perf_counter() - t0
        return RunOutput(out.tolist(), B * max_new, seconds, timer.calls)


# ----------------------------------------------------------------------------- transformers
def hf_mistral(checkpoint: str, dtype: torch.dtype, attn: str = "sdpa") -> Any:
    """The checkpoint's weights as a ``transformers.MistralForCausalLM`` (EOS disabled).

    Raises
    ------
    ValueError
        When the checkpoint is not a plain Mistral-shaped model (YaRN, q/k norm,
        biases, tied embeddings or a draft adapter have no Mistral equivalent).
    """
    import transformers

    from graphrt.frontends.models.checkpoint import load_checkpoint

    cfg, net = load_checkpoint(checkpoint, dtype=dtype)
    unsupported = [name for name, bad in (("rope_parameters", cfg.rope_type != "default"),
                                          ("qk_norm", cfg.qk_norm), ("attention_bias", cfg.attention_bias),
                                          ("tie_word_embeddings", cfg.tie_word_embeddings),
                                          ("draft_adapter", cfg.draft_adapter is not None)) if bad]
    if unsupported:
        raise ValueError(f"hf_mistral: expected a plain Mistral-shaped checkpoint, found {unsupported} set in "
                         f"{checkpoint}/config.json")
    hc = transformers.MistralConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings, rope_theta=cfg.rope_theta, sliding_window=None,
        tie_word_embeddings=False, bos_token_id=cfg.bos_token_id, eos_token_id=None, pad_token_id=cfg.pad_token_id)
    hc._attn_implementation = attn
    model = transformers.MistralForCausalLM(hc).to(dtype).eval()
    sd = {("lm_head.weight" if k == "diffusion_head.weight" else "model." + k[len("encoder."):]): v
          for k, v in net.state_dict().items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or any("rotary" not in m for m in missing):
        raise ValueError(f"hf_mistral: weight names did not map onto Mistral's: missing {missing}, "
                         f"unexpected {unexpected}")
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = cfg.pad_token_id
    return model


class TransformersContender:
    """``model.generate`` greedy, EOS ignored.

    Parameters
    ----------
    model:
        From :func:`hf_mistral` (one per contender: the compiled one replaces ``forward``).
    fast:
        ``False``: as a user runs it by default (dynamic cache). ``True``: the fastest
        documented configuration, ``cache_implementation="static"`` with
        ``model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)``.
    """

    def __init__(self, model: Any, fast: bool) -> None:
        self.model, self.fast, self.mode = model, fast, "ar"
        self.backend = "static+compile" if fast else "default"
        self.name = "transformers static+compile" if fast else "transformers generate"
        if fast:
            model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)

    def run(self, prompts: list[list[int]], max_new: int) -> RunOutput:
        """``generate`` over the prompts as one batch (equal lengths, no padding)."""
        ids = torch.tensor(prompts, dtype=torch.int64)  # [B, P]
        kwargs: dict[str, Any] = {"cache_implementation": "static"} if self.fast else {}
        timer = ForwardTimer()
        timer.wrap(self.model, _hf_shape)
        try:
            t0 = time.perf_counter()
            with torch.no_grad():
                out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                                          min_new_tokens=max_new, do_sample=False, **kwargs)
            seconds = time.perf_counter() - t0
        finally:
            timer.unwrap()
        new = out[:, ids.shape[1]:]
        return RunOutput(new.tolist(), len(prompts) * len(timer.calls), seconds, timer.calls)


class ReferenceLoopContender:
    """Diffusion / linear self-speculation as the published reference code runs them (batch 1).

    One transformers call per forward over a ``DynamicCache``: the prefill and the
    causal forwards append their K/V, read-only forwards (denoise, draft) are run with
    a block-bidirectional 4-D mask and cropped off the cache afterwards, and a
    verification keeps only the accepted tokens' K/V. T = 0; the mask token is never
    predicted. The same tokens as graphrt's mode are expected (checked by the benchmark).
    """

    def __init__(self, model: Any, mode: str, block: int, mask_id: int, eos_id: int | None,
                 threshold: float = 0.9) -> None:
        if mode not in REFERENCE_MODES:
            raise ValueError(f"ReferenceLoopContender: mode expected one of {REFERENCE_MODES}, found {mode!r}")
        self.model, self.mode, self.block, self.mask_id, self.eos_id = model, mode, block, mask_id, eos_id
        self.threshold = threshold
        self.name, self.backend = "reference loop", "transformers"

    def _call(self, cache: Any, tokens: list[int], start: int, bidirectional: bool) -> torch.Tensor:
        """Logits ``[L, V]`` (mask token banned) of ``tokens`` at positions ``start..``."""
        L = len(tokens)
        kw: dict[str, Any] = {}
        if bidirectional:  # the block sees the cached prefix and itself, both ways
            dtype = self.model.dtype
            kw["attention_mask"] = torch.zeros(1, 1, L, start + L, dtype=dtype)  # [1, 1, L, P+L] additive
        logits = self.model(input_ids=torch.tensor([tokens]), position_ids=torch.arange(start, start + L)[None],
                            cache=cache, use_cache=True, **kw).logits[0]  # [L, V]
        logits[:, self.mask_id] = float("-inf")
        return logits

    def run(self, prompts: list[list[int]], max_new: int) -> RunOutput:
        """Decode one prompt."""
        from transformers import DynamicCache

        if len(prompts) != 1:
            raise ValueError(f"ReferenceLoopContender: expected one prompt (batch 1), found {len(prompts)}")
        timer = ForwardTimer()
        timer.wrap(self.model, _hf_shape)
        try:
            t0 = time.perf_counter()
            with torch.no_grad():
                cache = DynamicCache(config=self.model.config)
                seed = int(self._call(cache, prompts[0], 0, False)[-1].argmax())
                step = self._diffusion_block if self.mode == "diffusion" else self._self_spec_cycle
                out: list[int] = [] if self.mode == "diffusion" else [seed]
                start = len(prompts[0])
                while len(out) < max_new:
                    emitted, seed = step(cache, seed, start)
                    out += emitted
                    start += len(emitted)
            seconds = time.perf_counter() - t0
        finally:
            timer.unwrap()
        return RunOutput([out[:max_new]], len(timer.calls), seconds, timer.calls)

    def _diffusion_block(self, cache: Any, seed: int, start: int) -> tuple[list[int], int]:
        """Denoise ``[seed, MASK...]`` (threshold rule), then one causal forward writes its K/V."""
        b, mask_id, eos = self.block, self.mask_id, self.eos_id
        block = [seed] + [mask_id] * (b - 1)

        def unresolved() -> bool:  # a mask left before the first committed EOS
            return mask_id in (block[:block.index(eos)] if eos in block else block)

        while unresolved():
            logits = self._call(cache, block, start, True)  # [b, V]
            cache.crop(-b)  # read-only forward: drop its K/V
            probs = torch.softmax(logits, -1)
            cand = logits.argmax(-1)
            masked = [i for i, t in enumerate(block) if t == mask_id]
            conf = {i: float(probs[i, cand[i]]) for i in masked}
            ranked = sorted(masked, key=lambda i: (-conf[i], i))
            for i in [ranked[0]] + [i for i in ranked[1:] if conf[i] >= self.threshold]:
                block[i] = int(cand[i])
        block = [eos if t == mask_id else t for t in block]  # masks after an EOS read as EOS
        seed = int(self._call(cache, block, start, False)[-1].argmax())
        return block, seed

    def _self_spec_cycle(self, cache: Any, seed: int, start: int) -> tuple[list[int], int]:
        """Draft the block in one read-only bidirectional forward, verify it causally, keep the accepted K/V."""
        b = self.block
        block = [seed] + [self.mask_id] * (b - 1)
        draft_logits = self._call(cache, block, start, True)  # [b, V]
        cache.crop(-b)
        draft = [seed] + draft_logits[1:].argmax(-1).tolist()
        ar = self._call(cache, draft, start, False).argmax(-1).tolist()  # [b] AR token after each slot
        k = 0
        while k < b - 1 and ar[k] == draft[k + 1]:
            k += 1
        cache.crop(-(b - k - 1))  # keep the seed and the k matched drafts
        return ar[:k + 1], ar[k]


__all__ = ["ForwardTimer", "RunOutput", "GraphrtContender", "HandLoopContender", "TransformersContender",
           "ReferenceLoopContender", "hf_mistral", "REFERENCE_MODES"]
