"""denoise_select kernel (and the argmax+confidence -> denoise_select chain) against the references,
bitwise, in Numba's CUDA simulator (or on a GPU with NUMBA_ENABLE_CUDASIM=0)."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from graphrt.cuda_kernels.argmax_confidence import argmax_confidence, argmax_confidence_reference
from graphrt.cuda_kernels.denoise_select import denoise_select, denoise_select_reference, schedule_count
from graphrt.testing import (
    MASK_TOKEN_ID,
    blocks,
    check_kernel,
    confidences,
    kernel_settings,
    kernel_threads,
    logits,
)

VOCAB = 6


def _threshold(data: st.DataObject, batch: int):
    per_row = st.builds(lambda v: torch.tensor(v, dtype=torch.float64),
                        st.lists(st.sampled_from([0.0, 1.0, 0.5, 0.9]), min_size=batch, max_size=batch))
    return data.draw(st.one_of(st.sampled_from([0.0, 1.0, 0.9, 0.5, None]), per_row))


@kernel_settings(max_examples=60)
@given(data=st.data(), threads=kernel_threads())
def test_denoise_select_matches_reference(data, threads):
    """All-masked, unmasked and seed+mask rows; threshold 0, 1, per-row, or the count mode; conf ties,
    exact 0/1 and NaN; candidates that are themselves the mask id."""
    block = data.draw(blocks(vocab=VOCAB))
    b, n = block.shape
    candidates = torch.tensor(data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=b * n, max_size=b * n)),
                              dtype=torch.int64).reshape(b, n)
    conf = data.draw(confidences(b, n, dtype=data.draw(st.sampled_from([torch.float32, torch.float64]))))
    threshold = _threshold(data, b)
    count = data.draw(st.one_of(st.integers(-1, n + 1), st.builds(
        lambda v: torch.tensor(v, dtype=torch.int64), st.lists(st.integers(0, n + 1), min_size=b, max_size=b))))
    remaining = torch.full((b,), -1, dtype=torch.int64)
    check_kernel(denoise_select, denoise_select_reference, block, candidates, conf, mask_token_id=MASK_TOKEN_ID,
                 threshold=threshold, count=count, out_remaining=remaining, threads=threads)


@kernel_settings(max_examples=10)
@given(data=st.data(), threads=kernel_threads())
def test_argmax_confidence_then_denoise_select_chain(data, threads):
    """The T = 0 diffusion step: candidates and confidence from logits, then the commit."""
    block = data.draw(blocks(batch=2, length=st.integers(1, 6), vocab=VOCAB))
    b, n = block.shape
    x = data.draw(logits(batch=b, length=n, vocab=st.integers(1, 20), dtype=torch.float64))
    threshold = _threshold(data, b)
    def kernel_chain(block, x):
        tokens, conf = argmax_confidence(x, threads=threads)
        return denoise_select(block, tokens, conf, mask_token_id=MASK_TOKEN_ID, threshold=threshold, count=2,
                              threads=threads)[0]

    def reference_chain(block, x):
        tokens, conf = argmax_confidence_reference(x)
        return denoise_select_reference(block, tokens, conf, mask_token_id=MASK_TOKEN_ID, threshold=threshold,
                                        count=2)[0]

    check_kernel(kernel_chain, reference_chain, block, x)


def test_forced_progress_and_thresholds():
    m = MASK_TOKEN_ID
    block = torch.tensor([[7, m, m, m], [m, m, m, m], [1, 2, 3, 4], [m, 5, m, m]])
    cand = torch.tensor([[9, 8, 7, 6], [5, 4, 3, 2], [9, 9, 9, 9], [1, 1, 1, 1]])
    conf = torch.tensor([[0.0, 0.3, 0.3, 0.1], [0.2, 0.95, float("nan"), 0.95], [1.0, 1.0, 1.0, 1.0],
                         [float("nan"), 0.0, float("nan"), float("nan")]])
    out, left = check_kernel(denoise_select, denoise_select_reference, block, cand, conf, mask_token_id=m,
                             threshold=0.9, out_remaining=torch.zeros(4, dtype=torch.int64)).kernel_out
    assert out.tolist() == [
        [7, 8, m, m],      # forced: the most confident (0.3), lowest position on the tie
        [m, 4, m, 2],      # both >= 0.9 (the first is also the forced one); NaN never commits by threshold
        [1, 2, 3, 4],      # no mask: unchanged
        [1, 5, m, m],      # every masked conf NaN: argmax gives slot 0, which is masked -> forced
    ]
    assert left.tolist() == [2, 2, 0, 2]


def test_count_mode_ranks_like_a_stable_descending_sort():
    """NaN confidences sort first (as in torch.sort), then ties by position; unmasked slots never change."""
    m = MASK_TOKEN_ID
    block = torch.tensor([[m, m, m, m, 3], [m, 4, m, m, m]])
    cand = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]])
    conf = torch.tensor([[0.5, float("nan"), 0.5, 0.9, 1.0], [0.2, 1.0, 0.2, float("nan"), 0.2]])
    out = check_kernel(denoise_select, denoise_select_reference, block, cand, conf, mask_token_id=m,
                       threshold=None, count=2).kernel_out[0]
    assert out.tolist() == [[m, 2, m, 4, 3], [1, 4, m, 4, m]]


def test_schedule_count_splits_evenly_remainder_first():
    assert [schedule_count(7, 3, s) for s in range(3)] == [3, 2, 2]
    assert [schedule_count(3, 4, s) for s in range(4)] == [1, 1, 1, 0]
    steps = torch.tensor([3, 4])
    assert schedule_count(torch.tensor([7, 3]), steps, torch.tensor([0, 3])).tolist() == [3, 0]
