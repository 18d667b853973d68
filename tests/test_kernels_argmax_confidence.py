"""argmax_confidence / confidence kernels against their torch references (Numba CUDA simulator on CPU,
or the GPU with NUMBA_ENABLE_CUDASIM=0). Tokens are compared bitwise, confidences to rtol 1e-12."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from graphrt.cuda_kernels.argmax_confidence import (
    argmax_confidence,
    argmax_confidence_reference,
    confidence,
    confidence_reference,
)
from graphrt.testing import check_kernel, kernel_settings, kernel_threads, logits, vocab_sizes

@kernel_settings(max_examples=40)
@given(x=logits(dtype=torch.float32, vocab=vocab_sizes(max_value=70)), threads=kernel_threads())
def test_argmax_confidence_float32(x, threads):
    check_kernel(argmax_confidence, argmax_confidence_reference, x, threads=threads,
                 rtol={"out[1]": 1e-12}, atol={"out[1]": 1e-15})


@kernel_settings(max_examples=10)
@given(data=st.data(), dtype=st.sampled_from([torch.float64, torch.float16, torch.bfloat16]),
       threads=kernel_threads())
def test_argmax_confidence_other_dtypes_and_blocks(data, dtype, threads):
    x = data.draw(logits(dtype=dtype, batch=2, length=st.integers(1, 3), vocab=vocab_sizes(max_value=40)))
    check_kernel(argmax_confidence, argmax_confidence_reference, x, threads=threads,
                 rtol={"out[1]": 1e-12}, atol={"out[1]": 1e-15})


@kernel_settings(max_examples=15)
@given(data=st.data(), threads=kernel_threads())
def test_confidence_of_given_tokens(data, threads):
    x = data.draw(logits(vocab=vocab_sizes(max_value=50)))
    v = x.shape[-1]
    tokens = torch.tensor(data.draw(st.lists(st.integers(-2, v + 1), min_size=x.shape[0], max_size=x.shape[0])))
    check_kernel(confidence, confidence_reference, x, tokens, threads=threads, rtol=1e-12, atol=1e-15)


def test_edge_rows_documented_results():
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([
        [nan, nan, nan],          # all NaN -> token 0, conf 0
        [-inf, -inf, -inf],       # all -inf -> token 0, conf 0
        [1.0, inf, inf],          # +inf -> lowest +inf index, conf 0 (softmax undefined)
        [2.0, nan, 2.0],          # NaN is -inf; tie -> lowest index
        [0.0, -100.0, -inf],      # confidence rounds to exactly 1
    ])
    result = check_kernel(argmax_confidence, argmax_confidence_reference, x, rtol={"out[1]": 1e-12})
    tokens, conf = result.kernel_out
    assert tokens.tolist() == [0, 0, 1, 0, 0]
    assert conf[:3].tolist() == [0.0, 0.0, 0.0] and conf[4].item() == 1.0


def test_preallocated_outputs_are_written_in_place():
    x = torch.randn(3, 2, 33)
    tokens = torch.full((3, 2), -1, dtype=torch.int64)
    conf = torch.zeros(3, 2, dtype=torch.float32)
    got_tokens, got_conf = argmax_confidence(x, out_tokens=tokens, out_conf=conf, threads=8)
    assert got_tokens is tokens and got_conf is conf
    ref_tokens, ref_conf = argmax_confidence_reference(x)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(conf, ref_conf.float())
