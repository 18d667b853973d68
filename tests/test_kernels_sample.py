"""The sampling kernel against its torch reference, in Numba's CUDA simulator (or on a GPU with
NUMBA_ENABLE_CUDASIM=0), plus the device noise hash and statistical tests of the sampler."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from graphrt import noise, sampling
from graphrt.cuda_kernels.noise import uniform, uniform_reference
from graphrt.cuda_kernels.sample import sample, sample_reference
from graphrt.testing import (
    check_kernel,
    kernel_device,
    kernel_settings,
    kernel_threads,
    logits,
    sampling_params,
    vocab_sizes,
)


def _positions(data: st.DataObject, shape: tuple[int, ...]) -> torch.Tensor:
    n = 1
    for d in shape:
        n *= d
    values = data.draw(st.lists(st.integers(0, 2**34), min_size=n, max_size=n))
    return torch.tensor(values, dtype=torch.int64).reshape(shape)


@kernel_settings(max_examples=60)
@given(data=st.data(), threads=kernel_threads())
def test_sample_matches_reference(data, threads):
    """Tokens equal the reference's for every filter combination, tie pattern and NaN/inf row."""
    x = data.draw(logits(batch=st.integers(1, 3), vocab=vocab_sizes(max_value=40)))
    params = data.draw(sampling_params(x.shape[0], x.shape[-1]))
    purpose = data.draw(st.sampled_from([noise.SAMPLE, noise.DENOISE]))
    check_kernel(sample, sample_reference, x, _positions(data, tuple(x.shape[:-1])), purpose=purpose,
                 threads=threads, **params)


@kernel_settings(max_examples=10)
@given(data=st.data(), dtype=st.sampled_from([torch.float64, torch.float16, torch.bfloat16]),
       threads=kernel_threads())
def test_sample_other_dtypes_and_blocks(data, dtype, threads):
    """float64 (64-bit search keys), float16 and bfloat16 logits, ``[B, L, V]`` rows with per-request params."""
    x = data.draw(logits(batch=2, length=st.integers(1, 2), vocab=vocab_sizes(max_value=30), dtype=dtype))
    params = data.draw(sampling_params(x.shape[0], x.shape[-1]))
    check_kernel(sample, sample_reference, x, _positions(data, tuple(x.shape[:-1])), threads=threads, **params)


@kernel_settings(max_examples=10)
@given(seed=st.integers(-(2**63), 2**64), noise_stream=st.integers(-5, 2**33), purpose=st.integers(0, 5),
       width=vocab_sizes(max_value=40), data=st.data())
def test_device_noise_is_bitwise_equal(seed, noise_stream, purpose, width, data):
    """The device hash reproduces graphrt.noise bit for bit (seeds beyond 64 bits, negative and huge positions)."""
    positions = torch.tensor(data.draw(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=3)))
    check_kernel(uniform, uniform_reference, seed, noise_stream, positions, purpose, width)


@kernel_settings(max_examples=15)
@given(data=st.data(), threads=kernel_threads())
def test_sample_tie_classes_at_the_filter_cuts(data, threads):
    """Rows of few distinct values, so the top-k / top-p cut falls inside a tie class whose lowest
    indices must be kept (stable-sort rule); many positions per example, so the Gumbel winner often
    lands on the boundary entries."""
    v = data.draw(st.integers(2, 12))
    pool = data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, -1.0]), min_size=1, max_size=2))
    row = torch.tensor(data.draw(st.lists(st.sampled_from(pool), min_size=v, max_size=v)))
    n = 12
    kw = dict(temperature=1.0, top_k=data.draw(st.integers(1, v - 1)),
              top_p=data.draw(st.sampled_from([1.0, 0.3, 0.5, 0.7])))
    check_kernel(sample, sample_reference, row.repeat(n, 1), torch.arange(n), seed=data.draw(st.integers(0, 99)),
                 threads=threads, **kw)


def test_sample_ties_keep_lowest_indices():
    """All-equal logits: top-k = 2 keeps indices {0, 1}; top-p = 0.5 over 4 equal entries keeps {0, 1}."""
    n = 48
    x, pos = torch.zeros(n, 4), torch.arange(n)
    for kw in ({"top_k": 2}, {"top_p": 0.5}, {"top_k": 3, "top_p": 0.6}):
        tokens = check_kernel(sample, sample_reference, x, pos, seed=3, temperature=1.0, threads=8, **kw).kernel_out
        assert set(tokens.tolist()) == {0, 1}, kw


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_top_p_cut_exactly_at_the_mass_of_equal_logits(dtype):
    """A case hypothesis found: 31 equal logits, T = 0.5, top-k 30, top-p 0.5. The 15 lowest indices
    hold mass 15/30 = 0.5 exactly, so top-p keeps them and no more; a running sum of 15 copies of
    1/30 is 0.5 - 2**-54 and kept a 16th token. Positions 5, 17 and 20 draw index 15 among 0..15."""
    n = 24
    x = torch.zeros(n, 31, dtype=dtype)
    kept = sampling.filter_logits(x[0], 0.5, 30, 0.5) > float("-inf")
    assert kept.nonzero().flatten().tolist() == list(range(15))
    tokens = check_kernel(sample, sample_reference, x, torch.arange(n), seed=0, temperature=0.5, top_k=30,
                          top_p=0.5, threads=8).kernel_out
    assert int(tokens.max()) <= 14 and {5, 17, 20} <= {i for i in range(n) if tokens[i] != 15}


def test_top_p_on_equal_logits_keeps_ceil_of_top_p_times_count():
    """Among ``m`` equal logits top-p keeps the ``ceil(top_p * m)`` lowest indices (the product
    rounded once to float64), whatever the order of summation: the reference's rule."""
    for m in range(1, 65):
        for top_p in sorted({j / m for j in range(1, m)} | {1e-6, 0.1, 0.3, 0.5, 0.7, 0.9, 0.97, 1 - 2**-53}):
            kept = sampling.top_p_mask(torch.full((m,), 1.25, dtype=torch.float64), top_p)
            want = max(math.ceil(top_p * m), 1)
            assert kept.tolist() == [True] * want + [False] * (m - want), (m, top_p)


def test_top_p_ties_at_the_cut_match_the_reference():
    """Equal logits whose top-k survivors' mass reaches top-p exactly at a token (and top-p values
    just off such a mass): per-row top-k and top-p in one launch, 8 positions per case. With seed 2
    the first token past the cut wins some rows of (0, 0.45), (36, 0.5 + 2**-53) and (30, 0.5), where
    a summed mass put the cut one token off."""
    cases = [(0, 0.45), (36, 0.5 + 2**-53), (30, 0.5), (12, 0.25), (12, 0.75), (24, 1 / 3), (20, 0.1),
             (0, 0.9), (10, 0.3), (36, 0.5 - 2**-54), (7, 3 / 7)]
    reps = 8
    top_k = torch.tensor([k for k, _ in cases for _ in range(reps)])
    top_p = torch.tensor([p for _, p in cases for _ in range(reps)], dtype=torch.float64)
    n = top_k.numel()
    check_kernel(sample, sample_reference, torch.full((n, 40), -0.75), torch.arange(n), seed=2, temperature=1.0,
                 top_k=top_k, top_p=top_p, threads=8)


def test_edge_rows_documented_results():
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([
        [nan, nan, nan, nan],          # all NaN -> 0
        [-inf, -inf, -inf, -inf],      # all -inf -> 0
        [0.0, inf, 3.0, inf],          # +inf -> its lowest index, whatever the noise
        [-inf, -inf, 1.0, -inf],       # one finite entry -> it, whatever the filters
    ])
    pos = torch.arange(4)
    for kw in ({}, {"top_k": 2}, {"top_p": 0.5}, {"top_k": 1, "top_p": 0.0}):
        result = check_kernel(sample, sample_reference, x, pos, seed=5, temperature=1.0, **kw)
        assert result.kernel_out.tolist() == [0, 0, 1, 2], kw


def test_rows_do_not_depend_on_batch_mates():
    torch.manual_seed(0)
    x = torch.randn(3, 21)
    pos = torch.tensor([4, 9, 9])
    together = sample(x, pos, seed=torch.tensor([1, 2, 3]), temperature=0.7, top_k=5, threads=8)
    alone = torch.cat([sample(x[b:b + 1], pos[b:b + 1], seed=b + 1, temperature=0.7, top_k=5, threads=8)
                       for b in range(3)])
    assert torch.equal(together, alone)


def test_bad_arguments_name_what_was_expected():
    x = torch.zeros(2, 5)
    try:
        sample(x, torch.zeros(3, dtype=torch.int64), seed=0, temperature=1.0)
    except ValueError as exc:
        assert "expected positions of shape (2,)" in str(exc) and "found (3,)" in str(exc)
    else:
        raise AssertionError("no error for mismatched positions")
    try:
        sample(x, torch.zeros(2, dtype=torch.int64), seed=0, temperature=torch.ones(3))
    except ValueError as exc:
        assert "temperature" in str(exc) and "[B] = [2]" in str(exc)
    else:
        raise AssertionError("no error for a per-row parameter of the wrong length")


# --------------------------------------------------------------------------------------------
# Statistics: counter-based noise gives independent draws at distinct positions.
# --------------------------------------------------------------------------------------------
ALPHA = 1e-6


def _chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of Pearson's chi-square test of ``counts`` against ``probs``.

    Tokens outside the support must never appear. Support bins whose expected
    count is below 5 are pooled (smallest first) so the chi-square
    approximation behind the stated false-failure probabilities holds.
    """
    support = probs > 0
    assert counts[~support].sum() == 0, "a token outside the filtered support was sampled"
    n = float(counts.sum())
    expected = (probs[support] * n).tolist()
    observed = counts[support].to(torch.float64).tolist()
    pairs = sorted(zip(expected, observed))
    bins: list[list[float]] = []
    pool = [0.0, 0.0]
    for e, o in pairs:
        pool = [pool[0] + e, pool[1] + o]
        if pool[0] >= 5.0:
            bins.append(pool)
            pool = [0.0, 0.0]
    if pool[0] > 0:
        if bins:
            bins[-1] = [bins[-1][0] + pool[0], bins[-1][1] + pool[1]]
        else:
            bins.append(pool)
    if len(bins) < 2:
        return 1.0
    stat = sum((o - e) ** 2 / e for e, o in bins)
    dof = len(bins) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64),
                                         torch.tensor(stat / 2.0, dtype=torch.float64)))


ROW = torch.tensor([1.0, 0.5, 0.5, -1.0, 0.0, 2.0, float("nan"), -0.25])
CASES = [
    dict(temperature=0.8),
    dict(temperature=1.3, top_k=4),
    dict(temperature=0.9, top_p=0.8),
    dict(temperature=1.1, top_k=5, top_p=0.9),
]


def _softmax(scores: dict[int, float]) -> dict[int, float]:
    top = max(scores.values())
    weights = {i: math.exp(s - top) if s > float("-inf") else 0.0 for i, s in scores.items()}
    total = sum(weights.values())
    return {i: w / total for i, w in weights.items()}


def _expected(case: dict) -> torch.Tensor:
    """The filtered distribution of ``ROW``, computed in plain Python (not with the filter under test).

    NaN reads as -inf; divide by the temperature; keep the ``top_k`` largest scores
    (ties: lowest index); then, over the softmax of those, keep the most probable
    tokens (ties: lowest index) while the mass before a token is below ``top_p``.
    """
    top_k, top_p = case.get("top_k", 0), case.get("top_p", 1.0)
    scores = [float("-inf") if math.isnan(x) else x / case["temperature"] for x in ROW.tolist()]
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = order[:top_k] if 0 < top_k < len(order) else order
    probs = _softmax({i: scores[i] for i in kept})
    if top_p < 1.0:
        nucleus, mass = [], 0.0
        for i in kept:
            if nucleus and mass >= top_p:
                break
            nucleus.append(i)
            mass += probs[i]
        probs = _softmax({i: scores[i] for i in nucleus})
    return torch.tensor([probs.get(i, 0.0) for i in range(len(scores))], dtype=torch.float64)


def test_expected_distribution_by_hand() -> None:
    """The plain-Python expectation on a row small enough to check on paper."""
    row_probs = _expected(dict(temperature=0.8, top_k=4, top_p=0.8))
    # ROW / 0.8: 2.0 -> 2.5 (index 5), 1.0 -> 1.25 (0), 0.5 -> 0.625 (1, 2); top-4 keeps 5, 0, 1, 2;
    # their softmax masses are 0.6277, 0.1798, 0.0963, 0.0963: 5 and 0 reach 0.8 (0.8075), so top-p keeps two.
    want = torch.zeros(ROW.numel(), dtype=torch.float64)
    want[5], want[0] = 1 / (1 + math.exp(1.25 - 2.5)), 1 / (1 + math.exp(2.5 - 1.25))
    assert torch.allclose(row_probs, want)


def _reference_tokens(n: int, seed: int, case: dict) -> torch.Tensor:
    """The reference's draws at positions ``0..n-1`` (graphrt.sampling.sample, vectorised)."""
    return sampling.sample(ROW.repeat(n, 1), torch.arange(n), seed=seed, stream=0, purpose=noise.SAMPLE,
                           temperature=case["temperature"], top_k=case.get("top_k", 0),
                           top_p=case.get("top_p", 1.0))


def test_reference_sampler_distribution():
    """Chi-square test of the reference sampler over 20,000 positions per case.

    False-failure probability: if the sampler draws exactly from
    ``softmax(filter_logits(...))`` with independent noise per position, each
    case fails with probability ``ALPHA = 1e-6`` for a random seed (4 cases:
    at most 4e-6; chi-square approximation, bins pooled to >= 5 expected).
    The seed is fixed, so the test is deterministic.
    """
    n = 20_000
    for case in CASES:
        counts = torch.bincount(_reference_tokens(n, 12345, case), minlength=ROW.numel())
        assert _chi_square_p_value(counts, _expected(case)) > ALPHA, case


def test_kernel_sampler_distribution():
    """Chi-square test of the kernel over positions 0..N-1 (N = 200 in the simulator, 20,000 on a
    GPU; unfiltered and top-k + top-p), and bitwise agreement with the reference on every draw.

    False-failure probability: ``ALPHA = 1e-6`` per case for a random seed
    (2 cases: at most 2e-6; chi-square approximation, bins pooled to >= 5
    expected), assuming the kernel samples exactly; the seed is fixed, so the
    test is deterministic. Agreement with the reference at every position
    carries the reference's 20,000-draw test over to the kernel.
    """
    sim = kernel_device() == "sim"
    n, device = (200, "cpu") if sim else (20_000, "cuda")
    for case in (CASES[0], CASES[3]):
        x, pos = ROW.repeat(n, 1).to(device), torch.arange(n, device=device)
        tokens = sample(x, pos, seed=777, threads=8 if sim else None, **case).cpu()
        assert torch.equal(tokens, _reference_tokens(n, 777, case)), case
        counts = torch.bincount(tokens, minlength=ROW.numel())
        assert _chi_square_p_value(counts, _expected(case)) > ALPHA, case


def test_chi_square_test_has_power():
    """The statistic rejects a sampler with the wrong temperature (so the tests above can fail)."""
    counts = torch.bincount(_reference_tokens(20_000, 12345, dict(temperature=1.3)), minlength=ROW.numel())
    assert _chi_square_p_value(counts, _expected(dict(temperature=0.8))) < ALPHA
