"""Bad requests and failing steps against a real server process: OpenAI-style errors, and it goes on serving.

The server is the test harness's (``server_harness.py``): the shipped model with
no chat template and a backbone that raises for batches holding ``POISON`` or
reaching ``POISON_POSITION``.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

import graphrt
from support.server_harness import MODEL_NAME, POISON, metric, server

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

OK = {"model": MODEL_NAME, "prompt": "def f(x):\n", "max_tokens": 4, "temperature": 0}
CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def url():
    with server([], harness=True) as u:
        yield u


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _with(base: dict, **changes) -> dict:
    body = {**base, **changes}
    return {k: v for k, v in body.items() if v is not DROP}


DROP = object()

# (id, endpoint, body (dict or raw bytes), status, param the error must name, words the message must hold)
BAD = [
    ("malformed-json", "completions", b'{"model": "model", "prompt": ', 400, None, "malformed JSON"),
    ("not-an-object", "completions", b"[1, 2]", 400, None, "expected a JSON object"),
    ("not-utf8", "completions", b"\xff\xfe", 400, None, "malformed JSON"),
    ("missing-model", "completions", _with(OK, model=DROP), 400, "model", "required"),
    ("missing-prompt", "completions", _with(OK, prompt=DROP), 400, "prompt", "required"),
    ("unknown-model", "completions", _with(OK, model="gpt-9"), 404, "model", "gpt-9"),
    ("max-tokens-string", "completions", _with(OK, max_tokens="4"), 400, "max_tokens", "valid integer"),
    ("max-tokens-negative", "completions", _with(OK, max_tokens=-3), 400, "max_tokens", "greater than 0"),
    ("max-tokens-zero", "completions", _with(OK, max_tokens=0), 400, "max_tokens", "greater than 0"),
    ("max-tokens-huge", "completions", _with(OK, max_tokens=10**6), 400, "max_tokens", "room for at most"),
    ("max-tokens-float", "completions", _with(OK, max_tokens=2.5), 400, "max_tokens", "integer"),
    ("temperature-negative", "completions", _with(OK, temperature=-0.1), 400, "temperature", "greater than or equal"),
    ("temperature-bool", "completions", _with(OK, temperature=True), 400, "temperature", "number"),
    ("top-p-zero", "completions", _with(OK, top_p=0), 400, "top_p", "greater than 0"),
    ("top-p-above-one", "completions", _with(OK, top_p=1.01), 400, "top_p", "less than or equal to 1"),
    ("empty-prompt", "completions", _with(OK, prompt=""), 400, "prompt", "empty prompt"),
    ("empty-id-prompt", "completions", _with(OK, prompt=[]), 400, "prompt", "empty prompt"),
    ("prompt-batch", "completions", _with(OK, prompt=["a", "b"]), 400, "prompt", "one prompt per request"),
    ("prompt-wrong-type", "completions", _with(OK, prompt=7), 400, "prompt", "valid"),
    ("token-out-of-vocab", "completions", _with(OK, prompt=[5, 99999]), 400, "prompt", "outside the vocabulary"),
    ("prompt-too-long", "completions", _with(OK, prompt=[5] * 300), 400, "prompt", "positions"),
    ("unknown-mode", "completions", _with(OK, mode="turbo"), 400, "mode", "'self-spec'"),
    ("unknown-field", "completions", _with(OK, treshold=0.5), 400, "treshold", "Extra inputs"),
    ("stop-empty-string", "completions", _with(OK, stop=[""]), 400, "stop", "non-empty"),
    ("stop-too-many", "completions", _with(OK, stop=["a", "b", "c", "d", "e"]), 400, "stop", "at most 4"),
    ("stop-wrong-type", "completions", _with(OK, stop=5), 400, "stop", "valid"),
    ("n-two", "completions", _with(OK, n=2), 400, "n", "one choice per request"),
    ("logprobs-alternatives", "completions", _with(OK, logprobs=5), 400, "logprobs", "chosen token"),
    ("logprobs-with-stream", "completions", _with(OK, logprobs=0, stream=True), 400, "logprobs", "stream"),
    ("echo", "completions", _with(OK, echo=True), 400, "echo", "not implemented"),
    ("penalty", "completions", _with(OK, presence_penalty=0.5), 400, "presence_penalty", "not implemented"),
    ("block-length-zero", "completions", _with(OK, mode="diffusion", block_length=0), 400, "block_length", "greater than 0"),
    ("block-length-string", "completions", _with(OK, block_length="8"), 400, "block_length", "integer"),
    ("threshold-above-one", "completions", _with(OK, mode="diffusion", threshold=1.5), 400, "threshold", "1"),
    ("quadratic-threshold", "completions", _with(OK, mode="self-spec-quadratic", threshold=0.5), 400, "threshold",
     "threshold"),
    ("thinking-budget-negative", "completions", _with(OK, thinking_budget=-1), 400, "thinking_budget",
     "greater than or equal to 0"),
    ("thinking-budget-no-token", "completions", _with(OK, thinking_budget=4), 400, "thinking_budget",
     "end_think_token_id"),
    ("top-k-negative", "completions", _with(OK, top_k=-1), 400, "top_k", "greater than or equal to 0"),
    ("min-tokens-above-max", "completions", _with(OK, min_tokens=9), 400, "min_tokens", "at most max_tokens"),
    ("seed-string", "completions", _with(OK, seed="1"), 400, "seed", "integer"),
    ("stream-options-without-stream", "completions", _with(OK, stream_options={"include_usage": True}), 400,
     "stream_options", "stream=true"),
    ("chat-no-messages", "chat/completions", _with(CHAT, messages=[]), 400, "messages", "at least 1"),
    ("chat-bad-role", "chat/completions", _with(CHAT, messages=[{"role": "bot", "content": "x"}]), 400, "messages",
     "'user'"),
    ("chat-bad-content", "chat/completions", _with(CHAT, messages=[{"role": "user", "content": [{"type": "image"}]}]),
     400, "messages[0].content", "text part"),
    ("chat-top-logprobs", "chat/completions", _with(CHAT, logprobs=True, top_logprobs=3), 400, "top_logprobs",
     "chosen token"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_request_gets_an_openai_error_naming_the_field(url, case) -> None:
    _, endpoint, body, status, param, words = case
    kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) \
        else {"json": body}
    r = httpx.post(f"{url}/v1/{endpoint}", timeout=30, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err
    assert err["type"] == "invalid_request_error" and isinstance(err["code"], (str, type(None)))


def test_the_server_serves_everyone_else_while_bad_requests_arrive(client, url) -> None:
    def errors() -> float:
        return metric(url, "graphrt_http_errors_total", status="400") + metric(url, "graphrt_http_errors_total",
                                                                                status="404")

    before = errors()
    good = lambda _: client.completions.create(model=MODEL_NAME, prompt="def f(x):\n", max_tokens=6,  # noqa: E731
                                               temperature=0)
    with ThreadPoolExecutor(8) as pool:
        goods = [pool.submit(good, i) for i in range(4)]
        bads = [pool.submit(test_bad_request_gets_an_openai_error_naming_the_field, url, case) for case in BAD]
        for f in bads:
            f.result()
        assert all(f.result().usage.completion_tokens == 6 for f in goods)
    assert errors() == before + len(BAD)


def test_the_openai_client_raises_its_own_error_types(client) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=-1)
    assert info.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x")
    with pytest.raises(openai.BadRequestError, match="mode"):
        client.completions.create(model=MODEL_NAME, prompt="x", extra_body={"mode": "fast"})


def test_unknown_routes_and_methods_are_json_errors(url) -> None:
    r = httpx.get(url + "/v1/engines")
    assert r.status_code == 404 and "Not Found" in r.json()["error"]["message"]
    r = httpx.get(url + "/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["message"].startswith("GET /v1/completions")


def test_a_failing_step_fails_its_requests_with_500_and_the_session_goes_on(client, url) -> None:
    failed = metric(url, "graphrt_failed_steps_total")
    with pytest.raises(openai.InternalServerError) as info:
        client.completions.create(model=MODEL_NAME, prompt=[5, 6, POISON], max_tokens=4, temperature=0)
    assert info.value.status_code == 500 and "injected backbone failure" in info.value.message
    assert metric(url, "graphrt_failed_steps_total") == failed + 1
    # The session is usable: requests of every mode succeed and equal offline decoding.
    offline = graphrt.load(dtype="float64", max_batch=1)
    with ThreadPoolExecutor(4) as pool:
        resps = list(pool.map(lambda m: client.completions.create(
            model=MODEL_NAME, prompt="import os\n", max_tokens=10, temperature=0, extra_body={"mode": m}),
            ["ar", "diffusion", "self-spec", "self-spec-quadratic"]))
    for mode, resp in zip(["ar", "diffusion", "self-spec", "self-spec-quadratic"], resps):
        assert resp.choices[0].text == graphrt.generate(offline, "import os\n", mode=mode, max_new_tokens=10).text
    assert metric(url, "graphrt_active_requests") == 0


def test_a_step_failing_mid_stream_ends_the_stream_with_an_error_event(url) -> None:
    # The harness backbone fails at position POISON_POSITION: tokens stream first, then the step fails.
    body = {"model": MODEL_NAME, "prompt": "def f(x):\n", "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert len(events) > 10 and all("choices" in e for e in events[:-1])
    assert events[-1]["error"]["type"] == "server_error" and "injected" in events[-1]["error"]["message"]
    assert httpx.post(url + "/v1/completions", json={**body, "max_tokens": 4, "stream": False}).status_code == 200


def test_chat_without_a_template_is_a_clear_400(client) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}])
    assert "chat template" in info.value.message and info.value.body["param"] == "messages"
