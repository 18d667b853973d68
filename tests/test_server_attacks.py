"""Attacks on a real server process, over raw HTTP and through the ``openai`` client.

The server is the test harness's (``server_harness.py``: the shipped model in
float64, a backbone that raises for ``POISON``, sleeps for ``HANG`` and is slow
from position ``SLOW_FROM``), started on 127.0.0.1 with an API key and small
limits. After each attack a control request must give the same tokens as before
the first one, with no row left taken; the last tests drain a server with SIGTERM.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from support import server_harness
from support.server_harness import HANG, MODEL_NAME, POISON, server_process

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

KEYS = ("key-one-Yq3", "key-two-Zr8")
SLOW_FROM = 40
LIMITS = ["--max-queue", "8", "--max-body-bytes", "65536", "--read-timeout", "1", "--max-messages", "8",
          "--max-tokens", "100", "--request-timeout", "30", "--stall-timeout", "1", "--slow-from", str(SLOW_FROM)]
HARNESS = [sys.executable, server_harness.__file__]
CONTROL = {"model": MODEL_NAME, "prompt": "def f(x):\n", "max_tokens": 8, "temperature": 0.7, "seed": 3}
CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
BIG = (2**63, 2**70)  # just past int64, and far past it


@pytest.fixture(scope="module")
def served():
    with server_process(HARNESS, LIMITS, env={"GRAPHRT_API_KEY": ",".join(KEYS)}) as (url, proc):
        yield url, proc


@pytest.fixture(scope="module")
def url(served):
    return served[0]


@pytest.fixture(scope="module")
def http(url):
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEYS[0]}"}, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def baseline(http):
    return _control(http)


def _control(http: httpx.Client) -> str:
    r = http.post("/v1/completions", json=CONTROL)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def _metric(http: httpx.Client, name: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def assert_unharmed(http: httpx.Client, baseline: str) -> None:
    """The control request gives the same tokens as before, and no request holds a row or waits."""
    assert _control(http) == baseline
    deadline = time.monotonic() + 10
    while _metric(http, "graphrt_active_requests") or _metric(http, "graphrt_queue_depth"):
        assert time.monotonic() < deadline, "a row stayed taken"
        time.sleep(0.05)
    assert http.get("/health").json() == {"status": "ok"}


def _with(base: dict, **changes) -> dict:
    return {**base, **changes}


def _raw(text: str) -> bytes:
    return text.encode()


# (id, endpoint, body (dict, or raw bytes for what json.dumps cannot write), status, param)
FIELD_ATTACKS = [
    *[(f"{f}-{v.bit_length()}-bits", "completions", _with(CONTROL, **{f: v}), 400, f) for v in BIG
      for f in ("seed", "top_k", "block_length", "max_tokens", "min_tokens", "logprobs", "n", "best_of")],
    *[(f"thinking-budget-{v.bit_length()}-bits", "completions", _with(CONTROL, thinking_budget=v,
                                                                       end_think_token_id=5), 400, "thinking_budget")
      for v in BIG],
    *[(f"end-think-{v.bit_length()}-bits", "completions", _with(CONTROL, thinking_budget=2, end_think_token_id=v),
       400, "end_think_token_id") for v in BIG],
    *[(f"chat-{f}-{v.bit_length()}-bits", "chat/completions", _with(CHAT, **{f: v}), 400, f) for v in BIG
      for f in ("max_completion_tokens", "top_logprobs", "seed")],
    ("seed-below-int64", "completions", _with(CONTROL, seed=-2**63 - 1), 400, "seed"),
    ("top-k-above-vocab", "completions", _with(CONTROL, top_k=4097), 400, "top_k"),
    ("end-think-outside-vocab-logprobs", "completions", _with(CONTROL, thinking_budget=2, end_think_token_id=4096,
                                                              logprobs=0), 400, "end_think_token_id"),
    ("end-think-outside-vocab", "completions", _with(CONTROL, thinking_budget=2, end_think_token_id=10**6), 400,
     "end_think_token_id"),
    ("block-length-billion", "completions", _with(CONTROL, mode="diffusion", block_length=10**9), 400,
     "block_length"),
    ("block-length-above-positions", "completions", _with(CONTROL, mode="self-spec", block_length=257), 400,
     "block_length"),
    ("thinking-budget-above-positions", "completions", _with(CONTROL, thinking_budget=10**6, end_think_token_id=5),
     400, "thinking_budget"),
    ("max-tokens-above-server-max", "completions", _with(CONTROL, max_tokens=101), 400, "max_tokens"),
    ("prompt-id-past-int64", "completions", _with(CONTROL, prompt=[5, 2**70]), 400, "prompt"),
    ("prompt-id-negative", "completions", _with(CONTROL, prompt=[-1]), 400, "prompt"),
    ("prompt-batch-of-one-id-past-int64", "completions", _with(CONTROL, prompt=[[5, 2**64]]), 400, "prompt"),
    ("timeout-zero", "completions", _with(CONTROL, timeout=0), 400, "timeout"),
    ("timeout-above-server-max", "completions", _with(CONTROL, timeout=31), 400, "timeout"),
    *[(f"{f}-{c}", "completions", _raw(f'{{"model": "model", "prompt": "x", "{f}": {c}}}'), 400, f)
      for f in ("temperature", "top_p", "threshold", "timeout") for c in ("Infinity", "-Infinity", "NaN", "1e999")],
    ("logit-bias-infinity", "completions", _raw('{"model": "model", "prompt": "x", "logit_bias": {"5": Infinity}}'),
     400, "logit_bias"),
    ("json-30000-deep", "completions", b"[" * 30000 + b"]" * 30000, 400, None),
    ("json-40-deep", "completions", _raw('{"model": "model", "prompt": "x", "user": ' + "[" * 40 + "]" * 40 + "}"),
     400, "user"),
    ("int-5000-digits", "completions", _raw('{"model": "model", "prompt": "x", "seed": ' + "9" * 5000 + "}"), 400,
     None),
    ("content-40-deep", "chat/completions", _with(CHAT, messages=[{"role": "user", "content": [
        json.loads('{"a":' * 40 + '1' + '}' * 40)]}]), 400, "messages"),
    ("lone-surrogate-prompt", "completions", _raw('{"model": "model", "prompt": "a\\ud800b"}'), 400, "prompt"),
    ("lone-surrogate-stop", "completions", _raw('{"model": "model", "prompt": "x", "stop": ["\\udfff"]}'), 400,
     "stop"),
    ("lone-surrogate-message", "chat/completions",
     _raw('{"model": "model", "messages": [{"role": "user", "content": "\\ud800"}]}'), 400, "messages"),
    ("lone-surrogate-key", "completions", _raw('{"model": "model", "prompt": "x", "\\ud800": 1}'), 400, None),
    ("prompt-5000-ids", "completions", _with(CONTROL, prompt=[5] * 5000), 400, "prompt"),
    ("prompt-text-too-long-to-fit", "completions", _with(CONTROL, prompt="x" * 10_000), 400, "prompt"),
    ("stop-1000-strings", "completions", _with(CONTROL, stop=["a"] * 1000), 400, "stop"),
    ("messages-100", "chat/completions", _with(CHAT, messages=[{"role": "user", "content": "x"}] * 100), 400,
     "messages"),
    ("messages-text-too-long-to-fit", "chat/completions", _with(CHAT, messages=[
        {"role": "user", "content": "x" * 5000}] * 2), 400, "messages"),
]


def _post(http: httpx.Client, endpoint: str, body: dict | bytes) -> httpx.Response:
    if isinstance(body, bytes):
        return http.post(f"/v1/{endpoint}", content=body, headers={"content-type": "application/json"})
    return http.post(f"/v1/{endpoint}", json=body)


@pytest.mark.parametrize("case", FIELD_ATTACKS, ids=[c[0] for c in FIELD_ATTACKS])
def test_every_field_is_checked_before_it_reaches_the_engine(http, baseline, case) -> None:
    _, endpoint, body, status, param = case
    r = _post(http, endpoint, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error", err
    assert "found" in err["message"], err
    assert_unharmed(http, baseline)


@pytest.mark.parametrize("changes", [{"seed": 2**63 - 1}, {"seed": -2**63}, {"top_k": 4096},
                                     {"thinking_budget": 256, "end_think_token_id": 4095},
                                     {"mode": "diffusion", "block_length": 32}, {"timeout": 30}],
                         ids=["seed-int64-max", "seed-int64-min", "top-k-vocab", "budget-positions",
                              "block-length-32", "timeout-max"])
def test_the_extremes_of_each_range_are_served(http, baseline, changes) -> None:
    r = http.post("/v1/completions", json=_with(CONTROL, **changes))
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1
    assert_unharmed(http, baseline)


def test_concurrent_requests_are_untouched_by_an_attack_storm(http, baseline) -> None:
    with ThreadPoolExecutor(6) as pool:
        controls = [pool.submit(_control, http) for _ in range(4)]
        attacks = [pool.submit(_post, http, c[1], c[2]) for c in FIELD_ATTACKS]
        assert all(f.result().status_code == 400 for f in attacks)
        assert [f.result() for f in controls] == [baseline] * 4
    assert_unharmed(http, baseline)


def test_a_request_failing_at_run_time_fails_alone(http, baseline) -> None:
    prompts = ["import os\n", "class A:\n", "def g(y):\n"]
    # long enough (slow from position SLOW_FROM on) to be running when the poisoned request joins them
    body = _with(CONTROL, max_tokens=45, ignore_eos=True)
    alone = [http.post("/v1/completions", json=_with(body, prompt=p)).json()["choices"][0]["text"] for p in prompts]
    failed = _metric(http, "graphrt_failed_steps_total")

    def stream(prompt: str, started: threading.Event) -> str:
        text = ""
        with http.stream("POST", "/v1/completions", json=_with(body, prompt=prompt, stream=True)) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    started.set()
                    text += json.loads(line[6:])["choices"][0]["text"]
        return text

    with ThreadPoolExecutor(3) as pool:
        events = [threading.Event() for _ in prompts]
        mates = [pool.submit(stream, p, e) for p, e in zip(prompts, events)]
        assert all(e.wait(30) for e in events)
        r = http.post("/v1/completions", json=_with(CONTROL, prompt=[5, 6, POISON]))  # shares the mates' steps
        assert r.status_code == 500 and "injected backbone failure" in r.json()["error"]["message"], r.text
        assert [f.result() for f in mates] == alone
    assert _metric(http, "graphrt_failed_steps_total") == failed + 1
    assert_unharmed(http, baseline)


def test_health_reports_a_stalled_engine_until_it_moves_again(http, baseline) -> None:
    with ThreadPoolExecutor(1) as pool:
        hung = pool.submit(http.post, "/v1/completions", json=_with(CONTROL, prompt=[5, HANG]))
        deadline = time.monotonic() + server_harness.HANG_S + 5
        while (h := http.get("/health")).status_code == 200:
            assert time.monotonic() < deadline, "/health never reported the stalled engine"
            time.sleep(0.1)
        assert h.status_code == 503 and "stalled" in h.json()["status"]
        assert hung.result().status_code == 200
    assert_unharmed(http, baseline)


def test_a_deadline_cancels_the_request_and_frees_its_row(http, baseline) -> None:
    start = time.monotonic()
    r = http.post("/v1/completions", json=_with(CONTROL, prompt=[5, HANG], timeout=0.5))
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded", r.text
    assert time.monotonic() - start < server_harness.HANG_S
    assert_unharmed(http, baseline)  # (waits for the hung step)
    # a stream past its deadline ends with an error event and [DONE] (slow from position SLOW_FROM on)
    body = _with(CONTROL, max_tokens=90, timeout=1.5, stream=True, ignore_eos=True)
    with http.stream("POST", "/v1/completions", json=body) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "deadline_exceeded"
    assert len(events) > 3
    assert_unharmed(http, baseline)


def test_the_openai_client_gets_its_own_errors(url, baseline, http) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEYS[1], max_retries=0, timeout=60)
    for extra in ({"seed": 2**70}, {"top_k": 2**63}, {"end_think_token_id": 4096, "thinking_budget": 1}):
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=4, extra_body=extra)
        assert info.value.body["param"] == next(iter(extra))
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "x"}] * 100)
    assert info.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError):
        list(client.completions.create(model=MODEL_NAME, prompt="x", stream=True, extra_body={"seed": 2**64}))
    out = client.completions.create(model=MODEL_NAME, prompt=CONTROL["prompt"], max_tokens=8, temperature=0.7,
                                    seed=3)
    assert out.choices[0].text == baseline
    with pytest.raises(openai.AuthenticationError) as info:
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert info.value.body["code"] == "invalid_api_key"
    assert_unharmed(http, baseline)


def test_a_request_whose_inputs_cannot_be_built_fails_alone_in_the_session() -> None:
    # What a seed past int64 did before it was refused at the door: it took a row, overflowed, and leaked it.
    import graphrt
    from graphrt.api import prepare
    from graphrt.frontends.serving.isolation import IsolatingSession

    model = graphrt.load(max_batch=2)
    policy, ids, params = prepare(model, "def f(x):\n", mode="ar", max_new_tokens=6, temperature=0.7, seed=3)
    session = IsolatingSession(model.backbone, model.tokenizer)
    bad = [session.add(policy, ids, dataclasses.replace(params, seed=2**70)) for _ in range(3)]  # > the 2 rows
    good = session.add(policy, ids, params)
    failed = {}
    while session.has_work:
        session.step()
        failed.update(session.take_failed())
    assert sorted(failed) == bad and all("overflow" in str(e).lower() for e in failed.values())
    assert session.release(good).tokens == graphrt.generate(model, ids, max_new_tokens=6, temperature=0.7,
                                                            seed=3).tokens
    assert model.backbone.free_row_count() == 2


def test_a_prompt_failing_in_its_own_call_of_a_split_round_fails_alone() -> None:
    """A server's session runs a prompt joining decoding rows in a call of its own (where padding costs more);
    when that call raises, the prompt's request fails and the decoding requests go on, as in a packed call."""
    import graphrt
    from graphrt.cost_model import CostModel
    from graphrt.frontends.serving.isolation import IsolatingSession
    from graphrt.params import GenerationParams
    from support.server_harness import POISON, FailingBackbone

    model = graphrt.load(max_batch=4)
    ar = graphrt.compile("ar", model)
    params = GenerationParams(max_new_tokens=6, ignore_eos=True)
    cm = CostModel(coef=[1e-2, 0.0, 1e-3, 0.0, 0.0, 0.0, 0.0, 0.0], points=[(1, 1, 1, False, 1e-2)] * 4)
    cm.observe = lambda shape, seconds: None  # type: ignore[method-assign]  # keep the given prices
    session = IsolatingSession(FailingBackbone(model.backbone), model.tokenizer, cost_model=cm, split_calls=True)
    mates = [session.add(ar, p, params) for p in ([5, 17, 33], [9, 4, 71])]
    session.step()
    session.step()  # the mates decode a token per round now
    poisoned = session.add(ar, [POISON] + list(range(5, 45)), params)
    failed: dict[int, Exception] = {}
    while session.has_work:
        session.step()
        failed.update(session.take_failed())
    assert list(failed) == [poisoned] and "injected backbone failure" in str(failed[poisoned])
    for rid, p in zip(mates, ([5, 17, 33], [9, 4, 71])):
        assert session.release(rid).tokens == graphrt.generate(model, p, max_new_tokens=6, ignore_eos=True).tokens


# ----------------------------------------------------------------------------- who may ask
def test_without_a_valid_key_only_health_answers(url, http, baseline) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEYS[0]}"},
                    {"Authorization": f"Bearer {KEYS[0]}x"}, {"Authorization": "Bearer"}):
        for method, path in (("POST", "/v1/completions"), ("GET", "/v1/models"), ("GET", "/metrics")):
            r = httpx.request(method, url + path, headers=headers, json=CONTROL)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (headers, path)
            err = r.json()["error"]
            assert err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error"
            assert KEYS[0] not in r.text
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEYS[1]}"}).status_code == 200
    assert_unharmed(http, baseline)


def test_metrics_open_only_with_metrics_public() -> None:
    from graphrt.frontends.serving.gate import Drain, Gate, GateConfig

    inner = Starlette(routes=[Route(p, lambda r: PlainTextResponse("ok")) for p in ("/metrics", "/health")])
    for public, status in ((True, 200), (False, 401)):
        app = Gate(inner, GateConfig(api_keys=("k",), metrics_public=public), Drain())
        with TestClient(app) as c:
            assert c.get("/metrics").status_code == status and c.get("/health").status_code == 200
    assert "secret-key" not in repr(GateConfig(api_keys=("secret-key",)))


@pytest.mark.parametrize("headers,status,code", [
    ({"content-type": "text/plain"}, 415, "unsupported_media_type"),
    ({"content-type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    ({"content-type": ""}, 415, "unsupported_media_type"),
    ({"content-type": "application/json", "host": "evil.example"}, 400, "invalid_host"),
    ({"content-type": "application/json", "host": "127.0.0.1.evil.example:80"}, 400, "invalid_host"),
    ({"content-type": "application/json", "origin": "http://evil.example"}, 403, "invalid_origin"),
    ({"content-type": "application/json; charset=utf-8", "host": "localhost:1"}, 200, None),
    ({"content-type": "application/json", "origin": "http://127.0.0.1:9"}, 200, None),
], ids=["text-plain", "form", "no-type", "host", "host-suffix", "origin", "localhost", "loopback-origin"])
def test_content_type_host_and_origin_are_checked(http, baseline, headers, status, code) -> None:
    r = http.post("/v1/completions", content=json.dumps(CONTROL).encode(), headers=headers)
    assert r.status_code == status, r.text
    if code is not None:
        assert r.json()["error"]["code"] == code
    assert_unharmed(http, baseline)


# ----------------------------------------------------------------------------- bodies and connections
def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def _request_head(url: str, headers: str) -> bytes:
    port = url.rsplit(":", 1)[1]
    return (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {KEYS[0]}\r\n"
            f"Content-Type: application/json\r\n{headers}\r\n").encode()


def _send_until_refused(url: str, head: bytes, chunk: bytes, total: int) -> bytes:
    """Send ``head``, then ``chunk`` until ``total`` bytes or the server stops reading; its answer."""
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    with socket.create_connection((host, port), timeout=20) as s:
        s.sendall(head)
        sent = 0
        try:
            while sent < total:
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:  # the server answered and closed: it read no further
            pass
        s.settimeout(20)
        answer = b""
        try:
            while not answer.endswith(b"}") and (data := s.recv(65536)):
                answer += data
        except OSError:
            pass
    assert sent < total, "the server read a 200 MB body whole"
    return answer


@pytest.mark.parametrize("how", ["content-length", "chunked"])
def test_a_200_mb_body_is_refused_without_reading_it(served, http, baseline, how) -> None:
    url, proc = served
    idle = _rss_kib(proc.pid)
    peak, stop = [idle], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak.append(_rss_kib(proc.pid))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        mib = b"x" * 2**20
        if how == "content-length":
            answer = _send_until_refused(url, _request_head(url, f"Content-Length: {200 * 2**20}\r\n"), mib, 200 * 2**20)
        else:
            chunk = f"{len(mib):x}\r\n".encode() + mib + b"\r\n"
            answer = _send_until_refused(url, _request_head(url, "Transfer-Encoding: chunked\r\n"), chunk, 200 * 2**20)
    finally:
        stop.set()
        watcher.join()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"request_too_large" in answer
    assert max(peak) < 2 * idle, f"peak RSS {max(peak)} KiB while refusing, idle {idle} KiB"
    assert_unharmed(http, baseline)
    assert _rss_kib(proc.pid) < idle + 64 * 1024


def test_a_body_that_stops_arriving_is_refused_after_the_read_timeout(url, http, baseline) -> None:
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(_request_head(url, "Content-Length: 1000\r\n") + b'{"model": ')
        start = time.monotonic()
        answer = b""
        while data := s.recv(65536):  # the head and the body may come in separate segments
            answer += data
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer, answer[:300]
    assert time.monotonic() - start < 5
    assert_unharmed(http, baseline)


def test_idle_and_half_sent_connections_are_closed(url, http, baseline) -> None:
    port = int(url.rsplit(":", 1)[1])
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(60)]
    try:
        for i, s in enumerate(socks):
            if i % 2:
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # a head never ended
        assert _control(http) == baseline  # served while they are held
        start = time.monotonic()
        for s in socks:
            assert s.recv(1024) == b""  # closed by the server
        assert time.monotonic() - start < 5
    finally:
        for s in socks:
            s.close()
    assert_unharmed(http, baseline)


# ----------------------------------------------------------------------------- graceful drain
def test_sigterm_drains_finishes_what_can_finish_and_ends_the_rest(tmp_path) -> None:
    args = ["--max-batch", "17", "--max-queue", "8", "--drain-timeout", "2", "--slow-from", "20"]
    with server_process(HARNESS, args) as (url, proc):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        started = [threading.Event() for _ in range(17)]

        def stream(i: int) -> tuple[str, str | None, list[str]]:
            # 16 short streams, and one (the last) too slow to finish within the drain timeout
            body = _with(CONTROL, seed=i, max_tokens=12, stream=True)
            if i == 16:  # at least 85 steps of SLOW_S from position 20 on
                body.update(max_tokens=100, ignore_eos=True)
            events = []
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        started[i].set()
                        events.append(line[6:])
            reasons = [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-1] if "choices" in e]
            return r.status_code, next((x for x in reasons if x), None), events

        with ThreadPoolExecutor(17) as pool:
            futures = [pool.submit(stream, i) for i in range(17)]
            assert all(e.wait(30) for e in started)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            health = httpx.get(url + "/health")
            assert health.status_code == 503 and health.json() == {"status": "draining"}
            late = httpx.post(url + "/v1/completions", json=CONTROL)
            assert late.status_code == 503 and late.headers["retry-after"] and \
                late.json()["error"]["code"] == "draining"
            with pytest.raises(openai.InternalServerError):
                client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=2)
            results = [f.result() for f in futures]
        for status, reason, events in results[:16]:
            assert status == 200 and reason in ("length", "stop") and events[-1] == "[DONE]"
        status, reason, events = results[16]
        assert status == 200 and reason is None and events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["type"] == "server_error" and "shutting down" in error["message"]
        assert proc.wait(timeout=30) == 0
