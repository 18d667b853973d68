"""The compiled backbone runs at static shape buckets: each bucket compiles once, never again.

One tiny model, every mode, a whole decode each: the compiled path gives the eager
path's tokens and forward counts, compiles exactly one graph per bucket it met, and
a second decode of every mode compiles nothing (dynamo's counters). Compiling costs
seconds per shape here, so the shapes are few (block 4: widths 1, 4, 8, 20; one key span).
"""

from __future__ import annotations

import torch

import graphrt
from decode_oracles import tiny_model
from graphrt.frontends.transformer import ShapeBuckets, TransformerBackbone

MODES = ("ar", "diffusion", "self-spec", "self-spec-quadratic")


def test_buckets_cover_the_modes_widths() -> None:
    b = ShapeBuckets.for_block(4, 300)
    assert b.widths[:4] == (1, 4, 16, 20) and b.width(1) == 1 and b.width(3) == 4 and b.width(21) == 32
    assert b.keys(1) == 64 and b.keys(65) == 128 and b.keys(299) == 300 and b.width(300) == 300


def test_compiled_backbone_compiles_each_bucket_once() -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    eager = tiny_model(seed=5)
    compiled = graphrt.Model(TransformerBackbone(eager.backbone.model, max_rows=2, compile=True))
    prompt = [7, 33, 12, 9]
    params = dict(max_new_tokens=10, ignore_eos=True)
    torch._dynamo.reset()
    counters.clear()
    for mode in MODES:
        got = graphrt.generate(compiled, prompt, mode=mode, **params)
        want = graphrt.generate(eager, prompt, mode=mode, **params)
        assert (got.tokens, got.forwards) == (want.tokens, want.forwards), mode
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == len(compiled.backbone.shapes_seen), (graphs, compiled.backbone.shapes_seen)
    for mode in MODES:  # steady state: a whole second decode of every mode, other prompt, compiles nothing
        graphrt.generate(compiled, [3, 8, 41], mode=mode, **params)
    assert counters["stats"]["unique_graphs"] == graphs
