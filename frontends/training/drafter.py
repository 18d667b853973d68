"""A drafter for a pretrained AR model: the Nemotron-Labs-Diffusion recipe as an adapter.

``graphrt train --init-from BASE --adapter-rank R`` keeps every base weight frozen and
trains only a draft adapter: a LoRA on the projections ``--adapter-modules`` and the
input embedding of the mask token (``--mask-token``, a special token the base model never
emits; the tied output head keeps the base row). Both apply to mask tokens only, which
are exactly the tokens of draft and denoise forwards, so prefill and verification run
the base weights and AR decoding stays the base model's, bit for bit.

The objective and the batch layout are those of :mod:`graphrt.frontends.training.command`
(``L = L_AR + 0.3 * L_diffusion`` on packed rows: a clean causal sequence, then blocks at
random offsets whose slot 0 is the clean seed and whose other slots are masked). With a
frozen base the AR term carries no gradient; it is logged as a check that the base is
untouched. ``--distill 1`` makes the diffusion targets the base model's own greedy
tokens under the clean prefix, the tokens verification accepts.

The adapter is written in PEFT's layout to ``OUT/drafter`` (``adapter_config.json`` with
``trainable_token_indices`` for the mask token, ``adapter_model.safetensors``, and
``training_record.json``), which ``graphrt.load(BASE, adapter=OUT/drafter)`` reads.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer as HFTokenizer

from ..models.checkpoint import load_checkpoint, read_peft_adapter, save_adapter
from ..models.config import ADAPTER_MODULES, ModelConfig
from ..models.transformer import CachedCall, Transformer, group_mask
from .objective import DIFFUSION_WEIGHT, TrainBatch

#: Adapter settings of a drafter run when the arguments do not say (LoRA on every projection:
#: a base model never trained on masks needs more than the released drafter's ``o_proj``).
DEFAULT_MODULES = ADAPTER_MODULES


class BaseTokenizer:
    """The base model's tokenizer as the data pipeline of ``train`` uses it.

    Parameters
    ----------
    hf : tokenizers.Tokenizer
        The base model's tokenizer.
    separator_id : int
        The id written before and after each file of the token streams (the base
        model's end-of-text token).
    mask_id : int
        The mask token.
    """

    def __init__(self, hf: HFTokenizer, separator_id: int, mask_id: int) -> None:
        self.hf = hf
        self.bos_id = self.eos_id = self.pad_id = separator_id
        self.mask_id = mask_id

    @classmethod
    def from_dir(cls, root: str | Path, config: ModelConfig) -> "BaseTokenizer":
        """Read ``root/tokenizer.json``; the separator is the config's EOS.

        Raises
        ------
        ValueError
            If ``root`` has no ``tokenizer.json``.
        """
        path = Path(root) / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"train --init-from: expected the base model's tokenizer at {path}, found no such file")
        eos = config.first_eos_token_id
        if eos is None:
            raise ValueError(f"train --init-from: expected an eos_token_id in {root}/config.json, found none")
        return cls(HFTokenizer.from_file(str(path)), eos, config.mask_token_id)

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of many texts (no special tokens added)."""
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]


def base_checkpoint(source: str) -> tuple[str, int | None]:
    """The checkpoint directory of ``--init-from`` and the mask token its name gives.

    Parameters
    ----------
    source : str
        A checkpoint directory, a GGUF file (converted once into the cache) or a
        named model (``smollm2``: :mod:`graphrt.frontends.models.named_models`).

    Returns
    -------
    (directory, mask_token_id)
        ``mask_token_id`` is the named model's (``None`` otherwise).
    """
    from ..models import gguf, named_models

    path, entry = named_models.resolve(source)
    if gguf.is_gguf_path(path):
        path = gguf.cached_checkpoint(path, torch.float32)
    return str(path), entry.mask_token_id if entry is not None else None


def drafter_config(base: ModelConfig, args: argparse.Namespace) -> ModelConfig:
    """``base`` with the draft adapter of ``args`` and its mask token.

    Parameters
    ----------
    base : ModelConfig
        The base model's config.
    args : argparse.Namespace
        ``adapter_rank``, ``adapter_alpha``, ``adapter_modules``, ``mask_token``.

    Returns
    -------
    ModelConfig

    Raises
    ------
    ValueError
        On a mask token outside the vocabulary or an unknown module.
    """
    modules = list(args.adapter_modules or DEFAULT_MODULES)
    cfg = ModelConfig(**{**base.__dict__, "draft_adapter": {
        "rank": int(args.adapter_rank), "alpha": float(args.adapter_alpha or 2 * args.adapter_rank),
        "target_modules": modules, "mask_embedding": True}})
    if args.mask_token is not None:
        cfg.mask_token_id = int(args.mask_token)
    cfg.validate("train --adapter-*/--mask-token arguments")
    return cfg


def build_drafter(args: argparse.Namespace) -> tuple[Transformer, BaseTokenizer]:
    """The base model of ``--init-from`` in float32 with a fresh, trainable draft adapter.

    LoRA ``A`` keeps ``nn.Linear``'s initialisation and ``B`` starts at zero (PEFT's
    choice: the adapter starts as the identity); the mask embedding starts at the mean
    input embedding. Every base parameter is frozen.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``train`` arguments (``init_from`` a checkpoint directory).

    Returns
    -------
    (model, tokenizer)
    """
    base_cfg, base = load_checkpoint(args.init_from, dtype=torch.float32)
    cfg = drafter_config(base_cfg, args)
    torch.manual_seed(args.seed)
    model = Transformer(cfg)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    trainable = {n for n, _ in model.named_parameters() if ".lora_" in n or n == "encoder.mask_embedding"}
    if unexpected or set(missing) - trainable:
        raise ValueError(f"train --init-from {args.init_from}: expected the base weights of the model, found "
                         f"missing {sorted(set(missing) - trainable)[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.requires_grad_(name in trainable)
            if name.endswith("lora_B.weight"):
                p.zero_()
        model.encoder.mask_embedding.copy_(model.encoder.embed_tokens.weight.mean(0, keepdim=True))
    if getattr(args, "init_adapter", None):
        load_adapter_(model, args.init_adapter)
    return model, BaseTokenizer.from_dir(args.init_from, cfg)


def load_adapter_(model: Transformer, path: str | Path) -> None:
    """Copy a saved drafter's tensors into ``model``'s adapter (continued training from a shipped drafter).

    Raises
    ------
    ValueError
        If the saved adapter's rank, modules or mask token differ from the model's.
    """
    from safetensors import safe_open

    saved, sources = read_peft_adapter(path)
    mine = model.config.draft_adapter or {}
    want = (mine.get("rank"), list(model.config.adapter_targets), model.config.mask_token_id)
    found = (saved["rank"], saved["target_modules"], saved.get("mask_token_id"))
    if want != found:
        raise ValueError(f"train --init-adapter {path}: expected an adapter of rank, modules and mask token {want}, "
                         f"found {found}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, (file, stored) in sources.items():
            with safe_open(str(file), framework="pt") as f:
                params[name].copy_(f.get_tensor(stored))


def drafter_losses(model: Transformer, batch: TrainBatch, distill: float = 0.0) -> dict[str, torch.Tensor]:
    """The diffusion loss of a packed batch in two passes: the clean sequences without autograd,
    then only the blocks with it.

    With the base frozen and the adapter on mask tokens only, nothing in the clean part of a
    row depends on a trained parameter, so its K/V are computed once under ``no_grad`` (a
    causal prefill into per-layer K/V tensors, as decoding fills its cache) and the blocks
    run as a cached call over them (each block's queries see the clean keys before its
    start and its own block, :func:`~graphrt.frontends.training.objective.block_training_mask`).
    Backward then runs over the block tokens only, and the output head only on block slots
    and the teacher positions. The result equals
    :func:`~graphrt.frontends.training.objective.compute_losses` on the same batch (tested),
    except that ``ar`` is not computed (NaN: the base model's AR loss cannot change).

    Parameters
    ----------
    model : Transformer
        A model whose trainable parameters are its draft adapter (:func:`build_drafter`).
    batch : TrainBatch
        From :func:`~graphrt.frontends.training.objective.build_batch`.
    distill : float
        Weight of the base model's greedy token as the diffusion target.

    Returns
    -------
    dict[str, torch.Tensor]
        ``loss`` (``0.3 * diff``), ``ar`` (NaN), ``diff``, ``diff_true``.
    """
    dev = model.encoder.embed_tokens.weight.device
    batch = batch.to(dev)
    B, L = batch.clean.shape
    T = batch.tokens.shape[1]
    nbb = T - L
    cfg = model.config
    KV, d, g = cfg.num_key_value_heads, cfg.head_dim, cfg.num_attention_heads // cfg.num_key_value_heads
    dtype = model.encoder.embed_tokens.weight.dtype
    k = [torch.zeros(B, KV, T, d, dtype=dtype, device=dev) for _ in range(cfg.num_hidden_layers)]  # [B, KV, T, d]
    v = [torch.zeros(B, KV, T, d, dtype=dtype, device=dev) for _ in range(cfg.num_hidden_layers)]
    rows, heads = torch.arange(B, device=dev)[:, None, None], torch.arange(KV, device=dev)[None, None, :]

    def index(slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # slots [L'] -> K/V index
        return rows.expand(B, slots.numel(), 1), heads, slots[None, :, None].expand(B, -1, 1)

    b = nbb // batch.starts.shape[1]
    src = batch.starts.repeat_interleave(b, dim=1) + torch.arange(b, device=dev).repeat(nbb // b) - 1  # [B, nb*b]
    with torch.no_grad():  # the clean part: a causal prefill into k/v; logits only where teachers are read
        teacher_logits = model.run_layers(batch.clean, batch.positions[:, :L], None, None,
                                          CachedCall(k, v, index(torch.arange(L, device=dev)), None, L, True),
                                          src)  # [B, nb*b, V]
    blk = batch.tokens[:, L:]  # [B, nb*b]
    logits = model.run_layers(blk, batch.positions[:, L:], group_mask(batch.mask[:, L:], g), blk == cfg.mask_token_id,
                              CachedCall(k, v, index(torch.arange(L, T, device=dev)), None, T, False),
                              torch.arange(nbb, device=dev).expand(B, nbb))  # [B, nb*b, V]
    sel = batch.masked  # [B, nb*b]
    d_logits = logits[sel].float()  # [M, V]
    diff_true = F.cross_entropy(d_logits, batch.block_targets[sel])
    diff = diff_true
    if distill > 0:
        teacher = teacher_logits[sel].argmax(-1)  # [M]
        diff = (1 - distill) * diff_true + distill * F.cross_entropy(d_logits, teacher)
    nan = torch.tensor(float("nan"), device=dev)
    return {"loss": DIFFUSION_WEIGHT * diff, "ar": nan, "diff": diff, "diff_true": diff_true}


def trainable_state(model: Transformer) -> dict[str, torch.Tensor]:
    """The adapter's tensors (what a drafter run saves and resumes)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in names}


def export_drafter(model: Transformer, out: Path, record: dict[str, Any]) -> Path:
    """Write ``out/drafter``: the PEFT adapter and ``training_record.json``.

    Parameters
    ----------
    model : Transformer
        The trained model.
    out : Path
        The run directory.
    record : dict
        The training record.

    Returns
    -------
    Path
        ``out/drafter``.
    """
    root = save_adapter(model, out / "drafter", {"base_model_name_or_path": str(record["args"]["init_from"])})
    (root / "training_record.json").write_text(json.dumps(record, indent=2) + "\n")
    return root
