"""``graphrt serve`` through the official ``openai`` client: a real server process on 127.0.0.1.

The server runs the shipped model in float64, so its outputs can be compared
token for token with offline ``graphrt.generate`` even when requests of
different modes share backbone calls.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

import graphrt
from support.server_harness import MODEL_NAME, metric, server

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PROMPTS = ["def parse_args(argv):\n", "import os\nimport sys\n\n", "class Config:\n    def __init__(self"]
MODES = ["ar", "diffusion", "self-spec", "self-spec-quadratic"]


@pytest.fixture(scope="module")
def url():
    with server(["--dtype", "float64", "--max-batch", "4", "--max-queue", "2"]) as u:
        yield u


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def offline():
    return graphrt.load(dtype="float64", max_batch=1)


def _complete(client, prompt, mode, **kw):
    extra = {"mode": mode, **kw.pop("extra_body", {})}
    return client.completions.create(model=MODEL_NAME, prompt=prompt, extra_body=extra, **kw)


def test_models_and_health(client, url) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert httpx.get(url + "/health").json() == {"status": "ok"}


@pytest.mark.parametrize("mode", MODES)
def test_completion_equals_offline_generate_greedy(client, offline, mode) -> None:
    resp = _complete(client, PROMPTS[0], mode, max_tokens=20, temperature=0)
    ref = graphrt.generate(offline, PROMPTS[0], mode=mode, max_new_tokens=20)
    choice = resp.choices[0]
    assert choice.text == ref.text
    assert resp.usage.completion_tokens == len(ref.tokens)
    assert resp.usage.prompt_tokens == len(offline.tokenizer.encode(PROMPTS[0]))
    assert choice.finish_reason == ("length" if ref.finish_reason == "length" else "stop")
    stats = resp.model_extra["graphrt"]
    assert stats["mode"] == mode and stats["forwards"] == ref.forwards
    assert stats["tpf"] == pytest.approx(ref.tpf)


@pytest.mark.parametrize("mode", ["ar", "diffusion", "self-spec"])
def test_completion_equals_offline_generate_sampled_same_seed(client, offline, mode) -> None:
    resp = _complete(client, PROMPTS[1], mode, max_tokens=24, temperature=0.9, top_p=0.95, seed=11)
    ref = graphrt.generate(offline, PROMPTS[1], mode=mode, max_new_tokens=24, temperature=0.9, top_p=0.95, seed=11)
    assert resp.choices[0].text == ref.text
    other = _complete(client, PROMPTS[1], mode, max_tokens=24, temperature=0.9, top_p=0.95, seed=12)
    assert other.choices[0].text != ref.text  # the seed matters


def test_token_id_prompt_and_logprobs(client, offline) -> None:
    ids = offline.tokenizer.encode(PROMPTS[2])
    resp = _complete(client, ids, "self-spec", max_tokens=12, temperature=0, logprobs=0)
    ref = graphrt.generate(offline, ids, mode="self-spec", max_new_tokens=12, logprobs=True)
    lp = resp.choices[0].logprobs
    assert lp.token_logprobs == pytest.approx(ref.logprobs, abs=1e-9)
    assert "".join(lp.tokens) == resp.choices[0].text == ref.text
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_stop_strings_cut_the_text(client, offline) -> None:
    # The stop string is taken from the model's own greedy text, so the test holds for any checkpoint.
    full = graphrt.generate(offline, PROMPTS[0], mode="ar", max_new_tokens=40).text
    words = [w for w in full[len(full) // 3:].split() if len(w) >= 2]
    assert words, f"the greedy output has no word to stop at: {full!r}"
    stop = words[0][:4]
    resp = _complete(client, PROMPTS[0], "ar", max_tokens=40, temperature=0, stop=[stop, "\x00never"])
    ref = graphrt.generate(offline, PROMPTS[0], mode="ar", max_new_tokens=40, stop_strings=(stop, "\x00never"))
    assert ref.finish_reason == "stop_string" and stop not in ref.text
    assert full.startswith(ref.text) and len(ref.text) < len(full)
    assert resp.choices[0].text == ref.text
    assert resp.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("mode,stop", [("ar", None), ("diffusion", None), ("self-spec-quadratic", None),
                                       ("ar", ["-line"])])
def test_streaming_chunks_add_up_to_the_completion(client, mode, stop) -> None:
    whole = _complete(client, PROMPTS[0], mode, max_tokens=30, temperature=0, stop=stop)
    chunks = list(_complete(client, PROMPTS[0], mode, max_tokens=30, temperature=0, stop=stop, stream=True,
                            stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) > 2, "tokens should stream in several chunks"
    assert "".join(texts) == whole.choices[0].text
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == whole.choices[0].finish_reason
    assert finals[0].model_extra["graphrt"]["forwards"] == whole.model_extra["graphrt"]["forwards"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stream_is_server_sent_events_ending_with_done(url) -> None:
    body = {"model": MODEL_NAME, "prompt": PROMPTS[1], "max_tokens": 8, "temperature": 0, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    first = json.loads(events[0][6:])
    assert first["object"] == "text_completion" and first["id"].startswith("cmpl-")


def test_concurrent_requests_of_different_modes_share_steps(client, url, offline) -> None:
    calls_before = metric(url, "graphrt_backbone_calls_total")
    jobs = [(PROMPTS[i % 3], mode) for i, mode in enumerate(MODES)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        resps = list(pool.map(lambda j: _complete(client, j[0], j[1], max_tokens=48, temperature=0), jobs))
    calls = metric(url, "graphrt_backbone_calls_total") - calls_before
    forwards = [r.model_extra["graphrt"]["forwards"] for r in resps]
    assert calls < sum(forwards), f"{calls} backbone calls for {forwards} forwards: no step was shared"
    for (prompt, mode), resp in zip(jobs, resps):
        assert resp.choices[0].text == graphrt.generate(offline, prompt, mode=mode, max_new_tokens=48).text, mode


def _wait_for(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_client_that_disconnects_is_cancelled_and_frees_its_row(client, url) -> None:
    cancelled = metric(url, "graphrt_requests_total", mode="ar", outcome="cancelled")
    body = {"model": MODEL_NAME, "prompt": PROMPTS[0], "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # the first chunk arrived: the request runs; now hang up
    _wait_for(lambda: metric(url, "graphrt_requests_total", mode="ar", outcome="cancelled") == cancelled + 1,
              "the streamed request to be cancelled")
    with pytest.raises(httpx.TimeoutException):  # a non-streamed request whose client gives up
        httpx.post(url + "/v1/completions", json={**body, "stream": False}, timeout=0.3)
    _wait_for(lambda: metric(url, "graphrt_requests_total", mode="ar", outcome="cancelled") == cancelled + 2,
              "the non-streamed request to be cancelled")
    _wait_for(lambda: metric(url, "graphrt_active_requests") == 0, "rows to be freed")
    assert _complete(client, PROMPTS[1], "ar", max_tokens=4, temperature=0).usage.completion_tokens == 4


def test_a_full_queue_answers_429_and_the_server_goes_on(client) -> None:
    # 4 cache rows + 2 waiting places: of 10 simultaneous long requests, some must be refused.
    def attempt(i: int) -> str:
        try:
            _complete(client, PROMPTS[i % 3], "ar", max_tokens=120, temperature=0)
            return "ok"
        except openai.RateLimitError as exc:
            assert exc.status_code == 429 and "queue is full" in exc.message
            return "429"

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(attempt, range(10)))
    assert outcomes.count("429") >= 1 and outcomes.count("ok") >= 4, outcomes
    assert _complete(client, PROMPTS[0], "diffusion", max_tokens=8, temperature=0).choices[0].text


def test_metrics_count_requests_tokens_tpf_and_latency(client, url) -> None:
    before = metric(url, "graphrt_tokens_total", mode="self-spec")
    resp = _complete(client, PROMPTS[0], "self-spec", max_tokens=16, temperature=0)
    assert metric(url, "graphrt_tokens_total", mode="self-spec") == before + resp.usage.completion_tokens
    text = httpx.get(url + "/metrics").text
    for name in ("graphrt_requests_total", "graphrt_forwards_total", "graphrt_tpf", "graphrt_queue_depth",
                 'graphrt_request_latency_seconds_bucket{le="+Inf",mode="self-spec"}',
                 'graphrt_time_to_first_token_seconds_count{mode="self-spec"}'):
        assert name in text, name
    assert metric(url, "graphrt_tpf", mode="self-spec") == pytest.approx(
        metric(url, "graphrt_tokens_total", mode="self-spec") / metric(url, "graphrt_forwards_total", mode="self-spec"))


def test_the_readme_serving_example_runs(url, capsys) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "openai.OpenAI(" in b)
    exec(block.replace("http://127.0.0.1:8000", url), {})
    out = capsys.readouterr().out
    assert out.strip(), "the example prints the completion and the streamed chat reply"
