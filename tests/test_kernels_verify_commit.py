"""verify_accept and commit kernels against their references, bitwise, in Numba's CUDA simulator
(or on a GPU with NUMBA_ENABLE_CUDASIM=0), and the verify -> commit chain of a self-speculation step."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from graphrt.cuda_kernels.commit import commit, commit_reference
from graphrt.cuda_kernels.verify_accept import verify_accept, verify_accept_reference
from graphrt.testing import check_kernel, drafts, kernel_settings, kernel_threads


@kernel_settings(max_examples=60)
@given(pair=drafts(), data=st.data(), threads=kernel_threads())
def test_verify_accept_matches_reference(pair, data, threads):
    """Every accepted length 0..L-1 (including L = 1: nothing to accept), scalar or per-row start."""
    block, ar = pair
    b = block.shape[0]
    start = data.draw(st.one_of(st.integers(0, 100), st.builds(
        lambda v: torch.tensor(v, dtype=torch.int64), st.lists(st.integers(0, 100), min_size=b, max_size=b))))
    check_kernel(verify_accept, verify_accept_reference, block, ar, start=start, threads=threads)


@kernel_settings(max_examples=60)
@given(data=st.data(), threads=kernel_threads())
def test_commit_matches_reference(data, threads):
    """Set and add, with rows out of range (skipped), duplicated (last set wins / adds sum), negative
    results (clamped to 0) and a capacity."""
    n = data.draw(st.integers(1, 6))
    lengths = torch.tensor(data.draw(st.lists(st.integers(0, 20), min_size=n, max_size=n)), dtype=torch.int64)
    u = data.draw(st.integers(1, 8))
    rows = data.draw(st.one_of(st.none(), st.builds(lambda v: torch.tensor(v, dtype=torch.int64),
                                                    st.lists(st.integers(-2, n + 1), min_size=u, max_size=u))))
    size = u if rows is not None else n
    values = data.draw(st.one_of(st.integers(-5, 30), st.builds(
        lambda v: torch.tensor(v, dtype=torch.int64), st.lists(st.integers(-30, 30), min_size=size, max_size=size))))
    check_kernel(commit, commit_reference, lengths, values, rows=rows, mode=data.draw(st.sampled_from(["set", "add"])),
                 capacity=data.draw(st.one_of(st.none(), st.integers(0, 25))), threads=threads)


def test_verify_then_commit_crops_cache_lengths():
    block = torch.tensor([[5, 1, 2, 3], [5, 1, 2, 3], [5, 9, 9, 9]])
    ar = torch.tensor([[1, 2, 3, 4], [1, 7, 3, 4], [0, 0, 0, 0]])
    start = torch.tensor([10, 20, 30])
    accepted, bonus, new_len = verify_accept(block, ar, start=start)
    assert accepted.tolist() == [3, 1, 0] and bonus.tolist() == [4, 7, 0] and new_len.tolist() == [14, 22, 31]
    lengths = torch.tensor([0, 14, 24, 34, 99])  # cache rows 1..3 hold start + L after the verify forward
    commit(lengths, new_len, rows=torch.tensor([1, 2, 3]))
    assert lengths.tolist() == [0, 14, 22, 31, 99]
