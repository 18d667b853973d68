"""IR: JSON round trip, printing, networkx view and the verifier's rejections."""

from __future__ import annotations

import pytest
import torch

import graphrt
from graphrt.backbone import BackboneConfig
from graphrt.builder import GraphBuilder
from graphrt.frontends import policies
from graphrt.ir import GraphError, Node, Value
from graphrt.printer import format_graph, to_dot
from graphrt.registry import OpDef, get_op, register_op
from graphrt.serialize import graph_from_json, graph_to_json
from graphrt.types import CACHE, TensorType, scalar, tensor

CONFIG = BackboneConfig(vocab_size=96, max_positions=256, mask_token_id=95, bos_token_id=1, eos_token_id=2,
                        block_size=4)
BUILT_IN = [policies.ar(), policies.diffusion(), policies.diffusion(3, None), policies.self_spec(),
            policies.self_spec(5, 0.5)]


@pytest.mark.parametrize("policy", BUILT_IN, ids=str)
def test_builtin_policies_verify_and_round_trip(policy) -> None:
    g = graphrt.verify(policy.build(CONFIG))
    text = graph_to_json(g)
    back = graph_from_json(text)
    assert graph_to_json(back) == text
    assert format_graph(back) == format_graph(g)
    graphrt.verify(back)
    assert to_dot(g).startswith("digraph")


def test_networkx_view_is_the_dataflow() -> None:
    g = policies.ar().build(CONFIG)
    dg = g.to_networkx()
    assert dg.number_of_nodes() == len(g.nodes) + len(g.inputs)
    loop = next(n for n in g.nodes if n.op == "loop")
    # The loop body reads seed/temperature from outside: those reads are edges into the loop node.
    preds = {dg.nodes[u].get("value") for u in dg.predecessors(loop.name)}
    assert {"seed", "temperature"} <= preds


def _small() -> tuple[GraphBuilder, object]:
    b = GraphBuilder("t")
    x = b.input("x", tensor("i64", "L"))
    return b, x


def test_verify_rejects_a_cycle() -> None:
    b, x = _small()
    y = x + 1
    z = y * 2
    g = b.build([z])
    add, mul = g.nodes[1], g.nodes[3]
    add.inputs[0] = mul.outputs[0]  # add reads mul, mul reads add
    with pytest.raises(GraphError, match=r"node 'add' \(add\): cycle through nodes"):
        graphrt.verify(g)


def test_verify_rejects_a_dangling_input() -> None:
    b, x = _small()
    g = b.build([x + 1])
    g.nodes[1].inputs[1] = Value("ghost", scalar("i64"))
    with pytest.raises(GraphError, match=r"node 'add' \(add\): input 1 %ghost is dangling"):
        graphrt.verify(g)


def test_verify_rejects_wrong_arity() -> None:
    b, x = _small()
    g = b.build([x.cumsum()])
    g.nodes[0].inputs.append(x.value)
    with pytest.raises(GraphError, match=r"node 'cumsum' \(cumsum\): wrong arity: expected 1 inputs"):
        graphrt.verify(g)


def test_verify_rejects_a_type_mismatch() -> None:
    b, x = _small()
    g = b.build([x.cumsum()])
    g.nodes[0].outputs[0].type = TensorType("float", ("L",))
    with pytest.raises(GraphError, match=r"node 'cumsum' \(cumsum\): type/shape mismatch: output %\S+ is "
                                         r"recorded as float\[L\]"):
        graphrt.verify(g)
    b2 = GraphBuilder("t2")
    f = b2.input("f", tensor("float", 4))
    with pytest.raises(GraphError, match=r"node 'add' \(add\): operands: expected equal dtypes"):
        b2.input("i", tensor("i64", 4)) + f
    with pytest.raises(GraphError, match=r"shapes must match or one be a scalar, found float\[4\] and float\[5\]"):
        f + b2.input("g", tensor("float", 5))


def test_verify_rejects_a_value_used_outside_its_region() -> None:
    b, x = _small()
    inner = []

    def body(i):
        j = i + 1
        inner.append(j)
        return j < 3, j

    (out,) = b.loop(True, [b.const(0)], body)
    leak = out + inner[0]  # reads the body's value from outside the loop
    with pytest.raises(GraphError, match=r"used outside its region \(defined in node 'add' inside the region of node 'loop'\)"):
        b.build([leak])


def test_verify_rejects_a_cache_write_in_a_read_only_forward() -> None:
    b = GraphBuilder("ro")
    cache = b.input("cache", CACHE)
    toks = b.input("tokens", tensor("i64", 4))
    logits = b.forward(cache, toks, b.arange(0, length=4), attention="bidirectional", write="none")
    g = b.build([logits])
    node = g.nodes[-1]
    node.outputs.append(Value("sneaky", CACHE, node))
    with pytest.raises(GraphError, match=r"node 'forward' \(forward\): cache write inside a read-only forward"):
        graphrt.verify(g)


def test_verify_rejects_forking_the_cache_state() -> None:
    b = GraphBuilder("fork")
    cache = b.input("cache", CACHE)
    toks = b.input("tokens", tensor("i64", 2))
    pos = b.arange(0, length=2)
    b.forward(cache, toks, pos)
    with pytest.raises(GraphError, match=r"cache state %cache is already written by node 'forward'"):
        b.forward(cache, toks, pos)
        b.build()


def test_verify_rejects_unregistered_ops_and_user_ops_need_a_reference() -> None:
    b, x = _small()
    g = b.build([x + 1])
    g.nodes.append(Node("mystery", [x.value], [], {}, [], "mystery"))
    with pytest.raises(GraphError, match=r"node 'mystery' \(mystery\): op 'mystery' is not registered"):
        graphrt.verify(g)
    with pytest.raises(ValueError, match="needs a torch reference implementation"):
        register_op(OpDef("no_ref", ("x",), {}, lambda ts, a: ts, None))


def test_user_registered_op_runs_in_a_policy() -> None:
    name = "clamp_tokens_test"
    if not graphrt.registry.has_op(name):
        register_op(OpDef(name, ("x",), {"hi": 0}, lambda ts, a: [ts[0]],
                          lambda x, hi: torch.clamp(x, max=hi), doc="clamp ids (test op)"))
    assert get_op(name).reference is not None
    b, x = _small()
    g = b.build([b.op(name, x, hi=5)])
    from graphrt.executor import LoweredGraph, Program

    prog = Program(LoweredGraph(g, torch.device("cpu")), {"x": torch.tensor([1, 9, 3])})
    assert prog.start() is None


def test_builder_reports_errors_at_the_line() -> None:
    b, x = _small()
    with pytest.raises(GraphError, match=r"op 'argmax': needs attribute|expected rank >= 1"):
        b.argmax(b.const(1))


def _reads(graph) -> dict[int, set[int]]:
    """id(value) -> ids of the nodes that read it, by walking every node of every region."""
    reads: dict[int, set[int]] = {}
    for node in graph.walk():
        for v in node.inputs:
            reads.setdefault(id(v), set()).add(id(node))
    return reads


def _assert_users_match_reads(graph, where: str) -> None:
    reads = _reads(graph)
    values = list(graph.inputs)
    for node in graph.walk():
        values += node.outputs + [v for r in node.regions for v in r.inputs]
    for v in values:
        assert {id(u) for u in v.users} == reads.get(id(v), set()), f"{where}: users of %{v.name}"


def test_nodes_know_their_users_through_edits() -> None:
    b = GraphBuilder("g")
    x = b.input("x", tensor("i64", 3))
    y = x + 1
    z = y * y
    g = b.build([z])
    add, mul = g.nodes[1], g.nodes[2]
    assert list(y.value.users) == [mul] and list(add.users) == [mul] and list(x.value.users) == [add]
    mul.inputs[0] = x.value                            # mul still reads y once
    assert list(y.value.users) == [mul] and list(x.value.users) == [add, mul]
    mul.inputs = [x.value, x.value]
    assert not y.value.users and not add.users
    mul.unlink()
    assert list(x.value.users) == [add] and mul.inputs == [x.value, x.value]


@pytest.mark.parametrize("policy", BUILT_IN, ids=str)
def test_users_stay_exact_through_every_pass(policy) -> None:
    from graphrt.passes import default_pipeline

    graph = policy.build(CONFIG)
    _assert_users_match_reads(graph, "as built")
    for step in default_pipeline(2).steps:
        graph = step.fn(graph).graph
        _assert_users_match_reads(graph, step.name)
