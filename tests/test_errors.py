"""Bad input gets a clear ValueError before anything runs (and nothing half-written)."""

from __future__ import annotations

import json

import pytest
import torch

import graphrt
from graphrt.frontends import policies
from graphrt.frontends.models.checkpoint import random_checkpoint
from support.decode_oracles import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=1, max_batch=2)


def test_model_directory_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="does-not-exist"):
        graphrt.load(tmp_path / "does-not-exist")
    bad = tmp_path / "corrupt"
    random_checkpoint(bad)
    (bad / "config.json").write_text("{ not json")
    with pytest.raises(ValueError, match="config.json"):
        graphrt.load(bad)
    trunc = tmp_path / "trunc"
    random_checkpoint(trunc)
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="safetensors"):
        graphrt.load(trunc)
    shape = tmp_path / "shape"
    random_checkpoint(shape)
    cfg = json.loads((shape / "config.json").read_text())
    cfg["intermediate_size"] += 1
    (shape / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"expected shape \[65, 32\], found \[64, 32\]"):
        graphrt.load(shape)


@pytest.mark.parametrize("prompt,params,match", [
    ([], {}, "expected at least one token, found an empty prompt"),
    ([5, 96], {}, r"token id 96 at index 1 is outside the vocabulary \[0, 96\)"),
    ([-1], {}, "token id -1 at index 0 is outside the vocabulary"),
    ([1] * 250, {"max_new_tokens": 10}, "exceeds the model's 256 positions"),
    ([1], {"max_new_tokens": 0}, r"max_new_tokens: expected an int > 0, found 0"),
    ([1], {"max_new_tokens": -3}, r"max_new_tokens: expected an int > 0, found -3"),
    ([1], {"temperature": -1.0}, "temperature: expected a number >= 0"),
    ([1], {"top_p": 0.0}, r"top_p: expected a number in \(0, 1\]"),
])
def test_request_errors(model, prompt, params, match) -> None:
    with pytest.raises(ValueError, match=match):
        graphrt.generate(model, prompt, mode="ar", **params)


def test_text_prompt_without_tokenizer(model) -> None:
    with pytest.raises(ValueError, match="needs a tokenizer"):
        graphrt.generate(model, "def f(", mode="ar")


@pytest.mark.parametrize("make,match", [
    (lambda: policies.diffusion(block_length=0), "block_length must be a positive int, found 0"),
    (lambda: policies.self_spec(block_length=-2), "block_length must be a positive int, found -2"),
    (lambda: policies.diffusion(threshold=1.5), r"threshold must be within \[0, 1\]"),
    (lambda: policies.self_spec(threshold=-0.1), r"threshold must be within \[0, 1\]"),
    (lambda: policies.diffusion(steps=0), "steps must be a positive int"),
    (lambda: policies.policy_for_mode("beam"), "mode: expected one of"),
])
def test_policy_parameter_errors(make, match) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_session_rejects_before_running_and_keeps_state(model) -> None:
    session = graphrt.Session(model.backbone)
    policy = graphrt.compile("ar", model)
    with pytest.raises(ValueError):
        session.add(policy, [], graphrt.GenerationParams())
    assert not session.has_work and model.backbone.free_row_count() == 2
    rid = session.add(policy, [3, 4], graphrt.GenerationParams(max_new_tokens=2))
    assert len(session.run()[rid].tokens) <= 2


def test_requests_wait_for_free_rows(model) -> None:
    session = graphrt.Session(model.backbone)
    policy = graphrt.compile("self-spec", model)
    ids = [session.add(policy, [10 + i, 3], graphrt.GenerationParams(max_new_tokens=5, ignore_eos=True))
           for i in range(5)]  # 5 requests, 2 cache rows
    results = session.run()
    assert all(len(results[i].tokens) == 5 for i in ids)
    assert model.backbone.free_row_count() == 2


def test_cuda_without_gpu_is_a_clear_error(tmp_path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    random_checkpoint(tmp_path / "m")
    with pytest.raises(ValueError, match="no CUDA device is available"):
        graphrt.load(tmp_path / "m", device="cuda")
