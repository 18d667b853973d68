"""Counter-based randomness.

The uniform used at a given place is a pure function of
``(seed, stream, absolute token position, purpose, vocabulary index)``; there is
no generator state. Consequences: a request's output does not depend on its
batch mates or on how many forwards its mode spent, and self-speculation at
``T > 0`` verifies with exactly the draws autoregressive decoding would have used.

The hash is a chain of MurmurHash3 ``fmix32`` finalisers over 32-bit words,
computed exactly in int64 arithmetic (every product stays below 2**49), so the
Numba kernels (native ``uint32``) reproduce it bit for bit.

>>> u = uniform(seed=1, stream=0, positions=torch.tensor([5, 6]), purpose=SAMPLE, width=3)
>>> u.shape, bool(((u > 0) & (u < 1)).all())
(torch.Size([2, 3]), True)
"""

from __future__ import annotations

import torch

SAMPLE = 0
"""Purpose of the draw that picks the token at a position from a causal logit."""
DENOISE = 1
"""Purpose of the draw that proposes a masked token from a diffusion logit."""

MASK32 = 0xFFFFFFFF
_H0 = 0x3C6EF372
_GOLDEN = 0x9E3779B1
_C1 = 0x85EBCA6B
_C2 = 0xC2B2AE35


def mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for int64 ``x`` in ``[0, 2**32)`` without overflow."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & MASK32


def fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding 32-bit words."""
    h = h ^ (h >> 16)
    h = mul32(h, _C1)
    h = h ^ (h >> 13)
    h = mul32(h, _C2)
    return h ^ (h >> 16)


def absorb(h: torch.Tensor, word: torch.Tensor | int) -> torch.Tensor:
    """Mix one 32-bit word into the running hash ``h``."""
    if isinstance(word, int):
        word = torch.tensor(word & MASK32, dtype=torch.int64)
    return fmix32((mul32(h, _GOLDEN) + (word & MASK32)) & MASK32)


def position_keys(seed: int, stream: int, positions: torch.Tensor, purpose: int) -> torch.Tensor:
    """Per-position hash state ``[...]`` (int64, 32-bit values) before the vocabulary index."""
    h = torch.full_like(positions, _H0, dtype=torch.int64)
    for word in (seed & MASK32, (seed >> 32) & MASK32, stream & MASK32, purpose):
        h = absorb(h, word)
    return absorb(h, positions.to(torch.int64))


def uniform(seed: int, stream: int, positions: torch.Tensor, purpose: int, width: int) -> torch.Tensor:
    """Uniforms in the open interval (0, 1), float64, shape ``[*positions.shape, width]``.

    Parameters
    ----------
    seed, stream:
        The request's seed and noise stream (a request identity chosen by the caller).
    positions:
        Absolute token positions the draws belong to.
    purpose:
        :data:`SAMPLE` or :data:`DENOISE` (or a user-defined small integer).
    width:
        Number of draws per position (the vocabulary size for Gumbel-max).
    """
    keys = position_keys(seed, stream, positions, purpose)  # [...]
    index = torch.arange(width, dtype=torch.int64, device=positions.device)  # [W]
    h = absorb(keys.unsqueeze(-1), index)  # [..., W]
    return (h.to(torch.float64) + 0.5) / 4294967296.0


def gumbel(seed: int, stream: int, positions: torch.Tensor, purpose: int, width: int) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log(u))`` built from :func:`uniform`, float64."""
    return -torch.log(-torch.log(uniform(seed, stream, positions, purpose, width)))
