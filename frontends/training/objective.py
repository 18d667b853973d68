"""The training objective: packed batches of clean sequences and diffusion blocks, and their losses.

``L = L_AR + 0.3 * L_diffusion`` on one packed forward per batch row; the row layout is
described in :mod:`graphrt.frontends.training.command`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.transformer import Transformer

DIFFUSION_WEIGHT = 0.3


@dataclass
class TrainBatch:
    """One packed training batch (see the module docstring for the layout).

    Attributes
    ----------
    tokens : torch.Tensor
        ``[B, T]`` int64: the clean sequence, then the blocks (``T = L + nb * b``).
    positions : torch.Tensor
        ``[B, T]`` int64 absolute positions (block slot j of block k: ``p_k + j``).
    mask : torch.Tensor
        ``[B, T, T]`` bool, True = may attend.
    clean : torch.Tensor
        ``[B, L]`` the clean sequence.
    starts : torch.Tensor
        ``[B, nb]`` block start positions ``p_k``.
    masked : torch.Tensor
        ``[B, nb * b]`` bool, which block slots hold the mask token.
    block_targets : torch.Tensor
        ``[B, nb * b]`` the clean token at each block slot.
    ar_rows : torch.Tensor or None
        ``[B]`` bool, rows whose clean sequence carries the AR loss (None: all;
        rows the model generated itself carry only the diffusion loss).
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor
    clean: torch.Tensor
    starts: torch.Tensor
    masked: torch.Tensor
    block_targets: torch.Tensor
    ar_rows: torch.Tensor | None = None

    def to(self, device: torch.device) -> "TrainBatch":
        """The batch with every tensor on ``device``."""
        return TrainBatch(*(None if t is None else t.to(device) for t in dataclasses.astuple(self)))


def block_training_mask(seq_len: int, starts: torch.Tensor, block_size: int) -> torch.Tensor:
    """The attention mask of a packed row: causal clean part, then blocks.

    Parameters
    ----------
    seq_len : int
        ``L``, length of the clean sequence.
    starts : torch.Tensor
        ``[B, nb]`` block start positions, each in ``[1, L - b]``.
    block_size : int
        ``b``.

    Returns
    -------
    torch.Tensor
        ``[B, T, T]`` bool with ``T = L + nb * b``: clean query ``i`` sees clean
        keys ``<= i``; a query of block ``k`` sees clean keys ``< starts[k]``
        and every key of block ``k``.
    """
    B, nb = starts.shape
    L, b = seq_len, block_size
    T = L + nb * b
    mask = torch.zeros(B, T, T, dtype=torch.bool)
    mask[:, :L, :L] = torch.ones(L, L, dtype=torch.bool).tril()
    q_start = starts.repeat_interleave(b, dim=1)  # [B, nb*b]
    mask[:, L:, :L] = torch.arange(L)[None, None, :] < q_start[:, :, None]
    block_id = torch.arange(nb).repeat_interleave(b)  # [nb*b]
    mask[:, L:, L:] = block_id[:, None] == block_id[None, :]
    return mask


def build_batch(clean: torch.Tensor, block_size: int, blocks_per_seq: int, mask_token_id: int,
                gen: torch.Generator, full_mask_prob: float = 0.5, seedless_prob: float = 0.0,
                min_start: torch.Tensor | None = None, ar_rows: torch.Tensor | None = None) -> TrainBatch:
    """Pack clean sequences and randomly placed, partly masked blocks into one batch.

    Parameters
    ----------
    clean : torch.Tensor
        ``[B, L]`` int64 clean token windows.
    block_size : int
        ``b`` (at least 2).
    blocks_per_seq : int
        ``nb`` blocks per row.
    mask_token_id : int
        Id written into masked slots.
    gen : torch.Generator
        Source of offsets, ratios and slot choices.
    full_mask_prob : float
        Probability that a block has every slot but the seed masked; otherwise
        the number of masked slots is uniform in ``1..b-1``.
    seedless_prob : float
        Probability that a block has every slot masked, the seed too (what
        quadratic self-speculation's mask rows see: ``b`` masks right after
        the causal chain). 0 (the default) draws no extra random numbers.
    min_start : torch.Tensor, optional
        ``[B]`` int64, the earliest block start per row (blocks of a row the
        model generated itself start inside its generated part); default 1.
    ar_rows : torch.Tensor, optional
        ``[B]`` bool, stored on the batch (see :class:`TrainBatch`).

    Returns
    -------
    TrainBatch

    Raises
    ------
    ValueError
        If ``b < 2`` or ``L < b + 1``.
    """
    B, L = clean.shape
    b, nb = block_size, blocks_per_seq
    if b < 2 or L < b + 1:
        raise ValueError(f"build_batch: expected block_size >= 2 and seq_len >= block_size + 1, "
                         f"found block_size={b}, seq_len={L}")
    if min_start is None:
        starts = torch.randint(1, L - b + 1, (B, nb), generator=gen)  # [B, nb]
    else:
        lo = min_start.clamp(1, L - b)[:, None]  # [B, 1]
        starts = lo + (torch.rand(B, nb, generator=gen) * (L - b + 1 - lo)).long()  # [B, nb]
    pos = starts[..., None] + torch.arange(b)  # [B, nb, b]
    blk_clean = torch.gather(clean, 1, pos.view(B, -1)).view(B, nb, b)  # [B, nb, b]
    full = torch.rand(B, nb, generator=gen) < full_mask_prob  # [B, nb]
    n_mask = torch.where(full, b - 1, torch.randint(1, b, (B, nb), generator=gen))  # [B, nb]
    rank = torch.rand(B, nb, b - 1, generator=gen).argsort(-1).argsort(-1)  # [B, nb, b-1]
    masked = torch.zeros(B, nb, b, dtype=torch.bool)
    masked[..., 1:] = rank < n_mask[..., None]
    if seedless_prob > 0:
        seedless = torch.rand(B, nb, generator=gen) < seedless_prob  # [B, nb]
        masked |= seedless[..., None]
    blk_tokens = torch.where(masked, torch.full_like(blk_clean, mask_token_id), blk_clean)
    tokens = torch.cat((clean, blk_tokens.view(B, -1)), dim=1)  # [B, T]
    positions = torch.cat((torch.arange(L).expand(B, L), pos.view(B, -1)), dim=1)  # [B, T]
    return TrainBatch(tokens=tokens, positions=positions, mask=block_training_mask(L, starts, b),
                      clean=clean, starts=starts, masked=masked.view(B, -1),
                      block_targets=blk_clean.view(B, -1), ar_rows=ar_rows)


def compute_losses(model: Transformer, batch: TrainBatch, distill: float = 0.0,
                   autocast: bool = True) -> dict[str, torch.Tensor]:
    """The joint objective on one batch.

    Parameters
    ----------
    model : Transformer
        The model.
    batch : TrainBatch
        From :func:`build_batch`.
    distill : float
        Weight ``w`` of the self-distillation target in the diffusion loss.
    autocast : bool
        Run the forward under bfloat16 autocast.

    Returns
    -------
    dict[str, torch.Tensor]
        ``loss`` (``ar + 0.3 * diff``), ``ar``, ``diff`` (the mixed-target
        diffusion loss), ``diff_true`` (diffusion loss on the true tokens).
        The AR loss is over ``batch.ar_rows`` only.
    """
    B, L = batch.clean.shape
    dev = model.encoder.embed_tokens.weight.device
    batch = batch.to(dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model.forward_dense(batch.tokens, batch.positions, batch.mask,
                                     batch.tokens == model.config.mask_token_id)  # [B, T, V]
    ar_logits = logits[:, :L - 1].float()  # [B, L-1, V]
    ar_rows = batch.ar_rows if batch.ar_rows is not None else torch.ones(B, dtype=torch.bool, device=dev)
    ar = F.cross_entropy(ar_logits[ar_rows].reshape(-1, ar_logits.shape[-1]), batch.clean[ar_rows, 1:].reshape(-1))
    sel = batch.masked  # [B, nb*b]
    d_logits = logits[:, L:][sel].float()  # [M, V]
    diff_true = F.cross_entropy(d_logits, batch.block_targets[sel])
    diff = diff_true
    if distill > 0:
        nbb = sel.shape[1]
        b = nbb // batch.starts.shape[1]
        src = batch.starts.repeat_interleave(b, dim=1) + torch.arange(b, device=dev).repeat(nbb // b) - 1  # [B, nb*b]
        rows = torch.arange(B, device=dev)[:, None].expand(B, nbb)
        teacher = ar_logits[rows[sel], src[sel]].detach().argmax(-1)  # [M]
        diff = (1 - distill) * diff_true + distill * F.cross_entropy(d_logits, teacher)
    return {"loss": ar + DIFFUSION_WEIGHT * diff, "ar": ar, "diff": diff, "diff_true": diff_true}


