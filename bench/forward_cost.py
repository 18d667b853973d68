"""Forward cost by width on graphrt's backbone: one row, a cached prefix, forwards of 1 / 8 / 72 tokens.

The widths are those the modes issue with blocks of 8: one AR token, one block
(diffusion, linear self-speculation), the quadratic mode's ``b * (b + 1)`` tokens.
Each forward is causal over the prefix and writes nothing, so the prefix stays the
same; widths are interleaved and the figure is the median.
"""

from __future__ import annotations

import statistics
import time

import torch

import graphrt
from graphrt.backbone import ForwardBatch

WIDTHS = (1, 8, 72)


def time_widths(model: graphrt.Model, prefix: int = 100, widths: tuple[int, ...] = WIDTHS, repeats: int = 30,
                seed: int = 0) -> dict[str, float]:
    """Median milliseconds of a forward of each width over a ``prefix``-token cached prefix."""
    bb = model.backbone
    need = prefix + max(widths)
    if need > bb.config.max_positions:
        raise ValueError(f"forward_cost: prefix {prefix} + width {max(widths)} = {need} exceeds the model's "
                         f"{bb.config.max_positions} positions")
    g = torch.Generator().manual_seed(seed)
    (row,) = bb.alloc_rows(1)
    try:
        ids = torch.randint(4, bb.config.vocab_size, (1, need), generator=g)  # [1, need]

        def call(start: int, width: int, write: bool) -> None:
            flag = torch.full((1, width), write)
            bb.forward(ForwardBatch(rows=[row], tokens=ids[:, start:start + width],
                                    positions=torch.arange(start, start + width)[None],
                                    attention=torch.ones(width, width, dtype=torch.bool).tril()[None], kind="causal",
                                    kv_write=flag, adapter=torch.zeros(1, width, dtype=torch.bool),
                                    valid=torch.ones(1, width, dtype=torch.bool)))

        call(0, prefix, True)  # the prefix, written once
        times: dict[int, list[float]] = {w: [] for w in widths}
        for rep in range(repeats + 2):  # two warm-up rounds
            for w in widths:
                t0 = time.perf_counter()
                call(prefix, w, False)
                if rep >= 2:
                    times[w].append((time.perf_counter() - t0) * 1e3)
    finally:
        bb.free_rows([row])
    return {str(w): statistics.median(v) for w, v in times.items()}


def forward_cost(models: dict[str, graphrt.Model], repeats: int = 30, prefix: int = 100) -> list[dict]:
    """:func:`time_widths` for each backend's model: ``[{backend, prefix, ms: {width: ms}}]``."""
    return [{"backend": backend, "prefix": prefix, "ms": time_widths(m, prefix, repeats=repeats)}
            for backend, m in models.items()]
