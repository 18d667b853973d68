"""Capture planning: static segments between host syncs, and the syncs that remain."""

from __future__ import annotations

from graphrt.backbone import BackboneConfig
from graphrt.builder import GraphBuilder
from graphrt.frontends import policies
from graphrt.passes import default_pipeline, plan_capture
from graphrt.passes.graph_utils import regions_with_keys
from graphrt.types import scalar, tensor

CONFIG = BackboneConfig(vocab_size=96, max_positions=256, mask_token_id=95, bos_token_id=1, eos_token_id=2,
                        block_size=4)


def _capture(graph):
    return default_pipeline(1).run(graph).graph.annotations["capture"]


def test_segments_cover_every_device_node_between_syncs() -> None:
    for mode in ("ar", "diffusion", "self-spec"):
        graph = default_pipeline(1).run(policies.policy_for_mode(mode).build(CONFIG)).graph
        cap = graph.annotations["capture"]
        for key, region in regions_with_keys(graph):
            in_segments = [n for s in cap.segments if s.region == key for n in s.nodes]
            syncs = [s.node for s in cap.syncs if s.region == key]
            assert sorted(in_segments + syncs) == sorted(n.name for n in region.nodes), (mode, key)
        assert all(s.capturable for s in cap.segments if s.region)    # every loop body is static
        top = [s for s in cap.segments if not s.region]
        assert not top[0].capturable and "dynamic shape" in top[0].reason  # the prompt's length P


def test_syncs_per_step_of_each_mode() -> None:
    ar = _capture(policies.build_ar(CONFIG))
    assert ar.syncs_per_run("loop") == {"forward": 1, "emit": 1, "commit": 0, "loop-condition": 0, "host-read": 0}
    ss = _capture(policies.build_self_spec(CONFIG))
    cycle = next(k for k in {s.region for s in ss.syncs} if k and ss.syncs_per_run(k)["commit"])
    assert ss.syncs_per_run(cycle) == {"forward": 1, "emit": 1, "commit": 1, "loop-condition": 1, "host-read": 0}


def test_host_reads_of_computed_values_cut_segments_parameters_do_not() -> None:
    b = GraphBuilder("g")
    x = b.input("x", tensor("float", 5))
    k = b.input("k", scalar("i64"))
    by_param = b.topk(x, k)                  # k is a request parameter: known at admission
    by_value = b.topk(x, b.argmax(x))        # k computed on the device: the host must read it
    graph = b.build([by_param, by_value])
    cap = plan_capture(graph).graph.annotations["capture"]
    assert [s.kind for s in cap.syncs] == ["host-read"] and "argmax" in cap.syncs[0].detail
    assert len(cap.param_reads) == 1 and [s.nodes for s in cap.segments] == [("topk", "argmax")]
    assert not any(s.capturable for s in cap.segments)  # no memory plan: nothing has a static address
