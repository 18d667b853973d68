"""The blocked product: ``x @ W.T`` to float32 rounding, and each row the same bits at every row count.

The second property is what lossless speculative decoding stands on: a token's logits must not depend on
how many other tokens shared its forward (an AR step, a verification block, other streams, a prompt).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graphrt.frontends.models.blocked_gemm import GROUP, LANES, TILE, BlockedWeight, _product

#: Up to three whole groups of blocks per thread on two threads, and a remainder.
MAX_OUT = 6 * GROUP * LANES + 2 * LANES + 5


@settings(max_examples=60, deadline=None)
@given(out=st.integers(1, MAX_OUT), fan_in=st.integers(1, 70), rows=st.integers(1, 4 * TILE + 3),
       seed=st.integers(0, 2**16), bias=st.booleans())
def test_the_product_and_every_row_alone(out: int, fan_in: int, rows: int, seed: int, bias: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    w, x = torch.randn(out, fan_in, generator=g), torch.randn(rows, fan_in, generator=g)
    b = torch.randn(out, generator=g) if bias else None
    packed = BlockedWeight(w, "test")
    y = packed(x, b)
    want = x.double() @ w.double().T + (0 if b is None else b.double())
    assert y.shape == (rows, out) and y.is_contiguous()
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5 * fan_in ** 0.5)
    for i in range(rows):  # every tile position, alone and as a call's first rows
        assert torch.equal(packed(x[i:i + 1], b), y[i:i + 1]), f"row {i} alone"
        assert torch.equal(packed(x[:i + 1], b), y[:i + 1]), f"the first {i + 1} rows"


@settings(max_examples=30, deadline=None)
@given(out=st.integers(1, MAX_OUT), fan_in=st.integers(1, 40), rows=st.integers(1, 2 * TILE + 1),
       seed=st.integers(0, 2**16))
def test_the_split_of_blocks_between_threads_changes_no_bit(out: int, fan_in: int, rows: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    packed = BlockedWeight(torch.randn(out, fan_in, generator=g), "test")
    x = torch.randn(rows, fan_in, generator=g).numpy()
    ys = []
    for threads in (1, 2, 3, 5, 7):  # runs of blocks per thread: whole groups, remainders, empty runs
        y = np.empty((rows, packed.array.shape[0] * LANES), np.float32)
        _product(packed.array, x, y, threads)
        ys.append(y)
    for threads, y in zip((2, 3, 5, 7), ys[1:]):
        assert np.array_equal(y, ys[0]), f"{threads} runs of blocks against one"


@settings(max_examples=40, deadline=None)
@given(outs=st.lists(st.integers(1, 40), min_size=1, max_size=5), fan_in=st.integers(1, 20),
       seed=st.integers(0, 2**16))
def test_stacked_weights_are_laid_out_as_their_concatenation(outs: list[int], fan_in: int, seed: int) -> None:
    """Parts that start and end anywhere in a block (fused projections) land where one stacked matrix would."""
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(n, fan_in, generator=g) for n in outs]
    stacked = torch.cat(parts)
    packed = BlockedWeight(parts, "test")
    assert packed.out_features == sum(outs) and packed.tensor.shape == (-(-sum(outs) // LANES), fan_in, LANES)
    want = torch.zeros(packed.tensor.shape[0] * LANES, fan_in)
    want[:sum(outs)] = stacked
    assert torch.equal(packed.tensor, want.view(-1, LANES, fan_in).transpose(1, 2))
    assert torch.equal(packed.tensor, BlockedWeight(stacked, "test").tensor)


def test_leading_dims_and_a_non_contiguous_input() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(40, 24, generator=g)
    packed = BlockedWeight(w, "test")
    x = torch.randn(2, 24, 5, generator=g).transpose(1, 2)  # [2, 5, 24], not contiguous
    torch.testing.assert_close(packed(x), x @ w.T, rtol=1e-5, atol=1e-5)
    assert packed(x).shape == (2, 5, 40)


def test_it_runs_on_torchs_thread_count() -> None:
    packed = BlockedWeight(torch.randn(32, 8), "test")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        packed(torch.randn(3, 8))
        assert numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    packed(torch.randn(3, 8))
    assert numba.get_num_threads() == min(before, numba.config.NUMBA_NUM_THREADS)


def test_bad_weights_and_inputs_are_named() -> None:
    with pytest.raises(ValueError, match=r"q_proj: expected a 2-D float32 CPU weight \[out, in\], found \(4, 4\) "
                                         r"torch.float64"):
        BlockedWeight(torch.zeros(4, 4, dtype=torch.float64), "q_proj")
    with pytest.raises(ValueError, match=r"found \(4,\)"):
        BlockedWeight(torch.zeros(4), "q_proj")
    with pytest.raises(ValueError, match=r"qkv: expected .*, found \(3, 5\) torch.float32 on cpu "
                                         r"\(part 1 of 2, in = 6"):
        BlockedWeight([torch.zeros(4, 6), torch.zeros(3, 5)], "qkv")
    packed = BlockedWeight(torch.zeros(4, 6), "q_proj")
    with pytest.raises(ValueError, match=r"q_proj: expected float32 input \[\.\.\., 6\], found torch.float32 \(2, 5\)"):
        packed(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"found torch.float64"):
        packed(torch.zeros(2, 6, dtype=torch.float64))
