"""The executor's one dispatch point: fused ops run as CUDA kernels (here in Numba's simulator)
through the registry's calling convention and agree with the torch references."""

from __future__ import annotations

import pytest
import torch

from graphrt.builder import GraphBuilder
from graphrt.executor import LoweredGraph
from graphrt.types import scalar, tensor

pytest.importorskip("numba")


def _fused_step_graph(L: int, V: int, threshold: float | None):
    b = GraphBuilder("fused_step")
    logits = b.input("logits", tensor("float", L, V))
    block = b.input("block", tensor("i64", L))
    positions = b.input("positions", tensor("i64", L))
    seed, stream = b.input("seed", scalar("i64")), b.input("stream", scalar("i64"))
    temperature, top_k, top_p = (b.input("temperature", scalar("float")), b.input("top_k", scalar("i64")),
                                 b.input("top_p", scalar("float")))
    cand = b.sample(logits, positions, seed, stream, temperature, top_k, top_p, purpose=1)
    conf = b.confidence(logits, cand)
    extra = [] if threshold is not None else [b.const(2)]
    new_block = b.denoise_select(block, cand, conf, *extra, mask_token_id=V - 1, threshold=threshold)
    k = b.verify_accept(new_block, cand)
    return b.build([cand, conf, new_block, k])


@pytest.mark.parametrize("threshold,temperature,top_k,top_p", [
    (0.9, 0.0, 0, 1.0), (0.0, 1.0, 0, 1.0), (None, 0.8, 5, 0.9), (1.0, 1.3, 0, 0.7),
])
def test_fused_ops_in_simulator_match_references(threshold, temperature, top_k, top_p) -> None:
    L, V = 5, 37  # V not a multiple of any thread-block size
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(L, V, generator=g, dtype=torch.float64) * 3
    logits[1, 4] = logits[1, 9] = logits[1].max() + 1.0  # a tie
    logits[3, :] = float("-inf")                           # an all -inf row
    inputs = {"logits": logits, "block": torch.tensor([7, V - 1, V - 1, 3, V - 1]),
              "positions": torch.arange(10, 10 + L), "seed": torch.tensor(5), "stream": torch.tensor(0),
              "temperature": torch.tensor(temperature, dtype=torch.float64), "top_k": torch.tensor(top_k),
              "top_p": torch.tensor(top_p, dtype=torch.float64)}
    graph = _fused_step_graph(L, V, threshold)
    ref = _outputs_for(graph, "off", inputs)
    sim = _outputs_for(graph, "simulator", inputs)
    assert torch.equal(ref[0], sim[0])
    torch.testing.assert_close(ref[1], sim[1], rtol=1e-12, atol=0)
    assert torch.equal(ref[2], sim[2]) and int(ref[3]) == int(sim[3])


def _outputs_for(graph, kernels: str, inputs: dict) -> list[torch.Tensor]:
    from graphrt.executor import _run as run_graph

    lowered = LoweredGraph(graph, torch.device("cpu"), kernels)
    env = {vid: inputs[v.name] for vid, v in zip(lowered.inputs, graph.inputs)}
    gen = run_graph(lowered, env)
    try:
        next(gen)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("a pure graph suspended")


def test_unknown_kernel_falls_back_to_reference() -> None:
    from graphrt.executor import resolve_impl
    from graphrt.registry import get_op

    assert resolve_impl("cumsum", torch.device("cpu"), "simulator") is get_op("cumsum").reference
    assert resolve_impl("sample", torch.device("cpu"), "off") is get_op("sample").reference
    with pytest.raises(ValueError, match="kernels expected"):
        resolve_impl("sample", torch.device("cpu"), "maybe")
