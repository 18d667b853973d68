"""The compiled backbone runs at static shape buckets: each bucket compiles once, never again.

One tiny model, every mode, a whole decode each: the compiled path gives the eager
path's tokens and forward counts, compiles exactly one graph per bucket it met, and
a second decode of every mode compiles nothing (dynamo's counters). Compiling costs
seconds per shape here, so the shapes are few (block 4: widths 1, 4, 8, 20; one key span).
"""

from __future__ import annotations

import torch

import graphrt
from support.decode_oracles import tiny_model
from graphrt.frontends.models.compiled_shapes import ShapeBuckets
from graphrt.frontends.models.transformer import TransformerBackbone

MODES = ("ar", "diffusion", "self-spec", "self-spec-quadratic")


def test_buckets_cover_the_modes_widths() -> None:
    b = ShapeBuckets.for_block(4, 300)
    assert b.widths[:4] == (1, 4, 16, 20) and b.width(1) == 1 and b.width(3) == 4 and b.width(21) == 32
    assert b.keys(1) == 64 and b.keys(65) == 128 and b.keys(299) == 300 and b.width(300) == 300
    rows = ShapeBuckets.for_block(4, 300, max_rows=6)
    assert rows.batches == (1, 2, 4, 6) and [rows.batch(n) for n in range(1, 7)] == [1, 2, 4, 4, 6, 6]


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
    assert any(causal for *_, causal in compiled.backbone.shapes_seen)  # the prefills: causal, no mask
    for mode in MODES:  # steady state: a whole second decode of every mode, other prompt, compiles nothing
        graphrt.generate(compiled, [3, 8, 41], mode=mode, **params)
    assert counters["stats"]["unique_graphs"] == graphs


def _mixed_session(model: graphrt.Model, prompts: list[list[int]]) -> list[list[int]]:
    """Requests of every mode with different lengths in one session: the batch shrinks as they finish."""
    session = graphrt.Session(model.backbone)
    ids = [session.add(graphrt.compile(mode, model), prompt,
                       graphrt.GenerationParams(max_new_tokens=4 + 3 * i, ignore_eos=True))
           for i, (mode, prompt) in enumerate(zip(MODES, prompts))]
    results = session.run()
    return [results[i].tokens for i in ids]


def test_compiled_graphs_do_not_depend_on_rows_or_batch_size() -> None:
    """Batch sizes are padded to buckets and a call's rows are views of the cache, so a session whose
    batch shrinks from 4 to 1, run again in other cache rows, compiles nothing new."""
    from torch._dynamo.utils import counters

    eager = tiny_model(seed=5)
    backbone = TransformerBackbone(eager.backbone.model, max_rows=6, compile=True)
    compiled = graphrt.Model(backbone)
    prompts = [[7, 33, 12, 9], [3, 8], [41, 5, 5], [9]]
    torch._dynamo.reset()
    counters.clear()
    assert _mixed_session(compiled, prompts) == _mixed_session(eager, prompts)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == len(backbone.shapes_seen), (graphs, backbone.shapes_seen)
    assert {s[0] for s in backbone.shapes_seen} == {1, 2, 4}  # batch buckets met as requests finished
    held = backbone.alloc_rows(1)  # the same work one row further on: new row ranges, same shapes
    assert _mixed_session(compiled, prompts[::-1]) == _mixed_session(eager, prompts[::-1])
    backbone.free_rows(held)
    assert counters["stats"]["unique_graphs"] == graphs


def test_background_compile_never_blocks_and_gives_the_eager_tokens() -> None:
    """``compile="background"``: calls whose bucket is still compiling run eagerly at the bucket's shape, the
    buckets compile on a worker thread (on padding rows only: the decodes running meanwhile are undisturbed),
    and once compiled a second decode runs every call compiled with the same tokens, compiling nothing new."""
    from torch._dynamo.utils import counters

    eager = tiny_model(seed=5)
    backbone = TransformerBackbone(eager.backbone.model, max_rows=6, compile="background")
    compiled = graphrt.Model(backbone)
    prompts = [[7, 33, 12, 9], [3, 8], [41, 5, 5], [9]]
    torch._dynamo.reset()
    counters.clear()
    want = _mixed_session(eager, prompts)
    assert _mixed_session(compiled, prompts) == want  # mostly eager: the compiles run meanwhile
    backbone.compiler.wait()
    assert not backbone.compiler.failed and set(backbone.compiler.seconds) == backbone.shapes_seen
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == len(backbone.shapes_seen)
    calls = []
    backbone.model.run_layers, plain = (lambda *a: calls.append("eager") or plain(*a)), backbone.model.run_layers
    try:
        assert _mixed_session(compiled, prompts) == want
    finally:
        del backbone.model.run_layers
    assert calls == [] and counters["stats"]["unique_graphs"] == graphs  # every call compiled, nothing new
