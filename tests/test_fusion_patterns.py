"""Fusion patterns are traced from the library: change a helper and fusion follows it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from graphrt import library, sampling
from graphrt.builder import GraphBuilder
from graphrt.passes import fuse
from graphrt.passes.patterns import trace_pattern
from graphrt.types import scalar, tensor
from support.pass_programs import evaluate, same


def _accept_graph():
    b = GraphBuilder("accept")
    block, ar = b.input("block", tensor("i64", 4)), b.input("ar", tensor("i64", 4))
    return b.build([library.accept_length(b, block, ar)])


def _sample_graph():
    b = GraphBuilder("sample")
    io = SimpleNamespace(seed=b.input("seed", scalar("i64")), stream=b.input("stream", scalar("i64")),
                         temperature=b.input("temperature", scalar("float")), top_k=b.input("top_k", scalar("i64")),
                         top_p=b.input("top_p", scalar("float")))
    logits = b.input("logits", tensor("float", 2, 5))
    return b.build([library.sample_tokens(b, logits, b.arange(b.const(3), length=2), io)])


def _accept_spelled_with_ne(b: GraphBuilder, block, ar_tokens):
    """The same rule as ``accept_length``, spelled as ``not(ar[:-1] != block[1:])``."""
    return b.cast(~(ar_tokens[:-1] != block[1:]), dtype="i64").cumprod().sum()


def test_fusion_follows_a_respelled_library_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    as_shipped = _accept_graph()
    assert fuse(as_shipped).info == {"verify_accept": 1}
    monkeypatch.setattr(library, "accept_length", _accept_spelled_with_ne)
    respelled = _accept_graph()
    fused = fuse(respelled)
    assert fused.info == {"verify_accept": 1} and fused.graph.outputs[0].producer.op == "verify_accept"
    assert not fuse(as_shipped).changed          # the old spelling is no longer the library's chain
    for block, ar in (([5, 1, 2, 3], [1, 2, 9, 9]), ([5, 1, 2, 3], [1, 2, 3, 4]), ([5, 1, 2, 3], [7, 7, 7, 7])):
        inputs = {"block": torch.tensor(block), "ar": torch.tensor(ar)}
        assert same(evaluate(fused.graph, inputs), evaluate(respelled, inputs))
    monkeypatch.undo()
    assert fuse(as_shipped).changed and not fuse(respelled).changed


def test_fusion_and_reference_follow_the_temperature_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    as_shipped = _sample_graph()
    monkeypatch.setattr(sampling, "TEMPERATURE_FLOOR", 1e-20)
    floored = _sample_graph()
    assert not fuse(as_shipped).changed
    fused = fuse(floored)
    assert fused.info == {"sample": 1}
    inputs = {"seed": torch.tensor(3), "stream": torch.tensor(0), "temperature": torch.tensor(1e-25, dtype=torch.float64),
              "top_k": torch.tensor(0), "top_p": torch.tensor(1.0, dtype=torch.float64),
              "logits": torch.tensor([[0.0, 1e-19, 0.0, 0.0, 0.0], [2e-19, 0.0, 1e-19, 0.0, 0.0]], dtype=torch.float64)}
    assert same(evaluate(fused.graph, inputs), evaluate(floored, inputs))


def test_commuted_operands_and_duplicated_constants_still_match() -> None:
    b = GraphBuilder("commuted")
    block, ar = b.input("block", tensor("i64", 4)), b.input("ar", tensor("i64", 4))
    match = b.eq(block[1:], ar[:-1])                       # operands of eq swapped
    b.build([b.cast(match, dtype="i64").cumprod().sum()])
    assert fuse(b.graph).info == {"verify_accept": 1}
    b = GraphBuilder("two_masks")
    block = b.input("block", tensor("i64", 3))
    conf = b.input("conf", tensor("float", 3))
    masked = block == 7
    scores = b.where(block == 7, conf, b.const(float("-inf"), "float"))  # a second `block == 7`: not the same value
    chosen = masked & ((b.arange(b.const(0), length=3) == b.argmax(scores)) | (scores >= 0.5))
    b.build([b.where(chosen, block, block)])
    assert not fuse(b.graph).changed


def test_a_symbol_the_chain_never_uses_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"pattern 'lost': symbol\(s\) \['threshold'\] never reach"):
        trace_pattern("lost", lambda b, s: b.input("x", scalar("float")) + (s.float("threshold") + 1.0))
