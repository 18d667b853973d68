"""Fuzzing the user-facing inputs: the builder, the JSON graph loader and HTTP request parameters.

Whatever a user passes, the only exceptions that may escape are ``GraphError``
and ``ValueError``, with a message (the server's ``RequestError`` is a
``ValueError``); never another exception type, and never a hang (each example
runs under an alarm).
"""

from __future__ import annotations

import contextlib
import json
import signal
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphrt
from graphrt.builder import GraphBuilder, Var
from graphrt.ir import GraphError
from graphrt.registry import all_ops
from graphrt.serialize import graph_from_json, graph_to_json
from graphrt.types import CACHE, scalar, tensor
from graphrt.verify import verify

ALLOWED = (GraphError, ValueError)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OPS = sorted(all_ops())


@contextlib.contextmanager
def no_hang(seconds: float = 10.0) -> Iterator[None]:
    """Fail (instead of hanging) when the body runs longer than ``seconds``."""
    def alarm(signum: int, frame: Any) -> None:
        raise AssertionError(f"no_hang: still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def allowed(call: Any, *args: Any, **kwargs: Any) -> Any:
    """``call(...)``; an allowed exception must carry a message, any other one fails the test."""
    try:
        with no_hang():
            return call(*args, **kwargs)
    except ALLOWED as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        return exc


# ----------------------------------------------------------------------------- the builder
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=True),
                         st.text(max_size=4), st.sampled_from(["causal", "bidirectional", "all", "none", "mask",
                                                               "i64", "float", "bool"]))
attr_values = st.one_of(json_scalars, st.lists(json_scalars, max_size=3))


@st.composite
def builder_programs(draw: st.DrawFn) -> list[tuple[str, list[int], dict[str, Any]]]:
    steps = []
    for _ in range(draw(st.integers(1, 6))):
        name = draw(st.sampled_from(OPS + ["no_such_op"]))
        opdef = all_ops().get(name)
        keys = sorted(opdef.attrs) if opdef is not None else ["x"]
        attrs = draw(st.dictionaries(st.sampled_from(keys + ["bogus"]), attr_values, max_size=3))
        steps.append((name, draw(st.lists(st.integers(0, 20), max_size=4)), attrs))
    return steps


def run_builder(program: list[tuple[str, list[int], dict[str, Any]]], outputs: list[int]) -> Any:
    b = GraphBuilder("fuzz")
    pool: list[Var] = [b.input("toks", tensor("i64", "L")), b.input("logits", tensor("float", "L", "V")),
                       b.input("n", scalar("i64")), b.input("cache", CACHE), b.input("flag", scalar("bool"))]
    for name, picks, attrs in program:
        args = [pool[i % len(pool)] for i in picks]
        try:
            out = b.op(name, *args, **attrs)
        except ALLOWED as exc:
            assert str(exc).strip()
            continue
        pool.extend([out] if isinstance(out, Var) else list(out or ()))
    graph = b.build([pool[i % len(pool)] for i in outputs])
    assert graph_from_json(graph_to_json(graph)).nodes.__len__() == len(graph.nodes)
    return graph


@FUZZ
@given(builder_programs(), st.lists(st.integers(0, 30), max_size=3))
def test_builder_raises_only_graph_or_value_errors(program, outputs) -> None:
    allowed(run_builder, program, outputs)


# ----------------------------------------------------------------------------- the JSON graph loader
POLICY_JSON: list[str] = []  # the AR policy's graph as JSON (built on first use)


def policy_json() -> str:
    if not POLICY_JSON:
        POLICY_JSON.append(graph_to_json(graphrt.compile("ar", graphrt.load(max_batch=1)).graph))
    return POLICY_JSON[0]


json_values = st.recursive(json_scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                                 st.dictionaries(st.text(max_size=6), kids,
                                                                                 max_size=4)), max_leaves=12)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _mutate(doc: Any, path: tuple, action: str, value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if action == "delete":
        del parent[key]
    elif action == "replace":
        parent[key] = value
    else:  # duplicate a list item or rename a key
        if isinstance(parent, list):
            parent.insert(key, parent[key])
        else:
            parent[f"{key}_"] = parent.pop(key)
    return doc


def load_and_verify(text: str) -> Any:
    return verify(graph_from_json(text))


@FUZZ
@given(st.data())
def test_graph_loader_raises_only_graph_or_value_errors_on_mutated_documents(data) -> None:
    doc = json.loads(policy_json())
    paths = _paths(doc)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["delete", "replace", "rename"]))
        doc = _mutate(doc, path, action, data.draw(json_values))
    allowed(load_and_verify, json.dumps(doc))


@FUZZ
@given(st.one_of(json_values.map(json.dumps), st.text(max_size=40), st.binary(max_size=20).map(
    lambda b: b.decode("latin-1"))))
def test_graph_loader_raises_only_graph_or_value_errors_on_any_text(text) -> None:
    allowed(load_and_verify, text)


# ----------------------------------------------------------------------------- request parameters
@pytest.fixture(scope="module")
def served():
    from graphrt.frontends.serving.engine import Engine
    from graphrt.frontends.serving.protocol import Defaults

    model = graphrt.load(max_batch=1)
    return Engine(model), Defaults("model")


FIELDS = ["model", "prompt", "messages", "max_tokens", "temperature", "top_p", "seed", "stop", "n", "stream",
          "stream_options", "logprobs", "top_logprobs", "mode", "block_length", "threshold", "thinking_budget",
          "end_think_token_id", "top_k", "min_tokens", "ignore_eos", "echo", "max_completion_tokens", "user"]
field_values = st.one_of(json_values, st.sampled_from(["model", "ar", "diffusion", "self-spec",
                                                       "self-spec-quadratic", "def f(x):\n"]),
                         st.integers(-5, 300), st.floats(-1, 3), st.lists(st.integers(-2, 5000), max_size=4),
                         st.just([{"role": "user", "content": "hi"}]))


def translate(engine: Any, defaults: Any, kind: str, body: dict[str, Any]) -> Any:
    """What a request handler does before it queues a job (everything but the engine thread)."""
    from graphrt.api import prepare
    from graphrt.frontends.serving.app import _field_of, parse_body
    from graphrt.frontends.serving.protocol import (ChatRequest, CompletionRequest, RequestError, chat_messages,
                                                    completion_prompt, decode_settings)

    schema = ChatRequest if kind == "chat" else CompletionRequest
    req = parse_body(schema, json.dumps(body).encode())
    settings = decode_settings(req, defaults)
    prompt = {"messages": chat_messages(req)} if kind == "chat" else {"prompt": completion_prompt(req)}
    policy = engine.policy(settings.mode, settings.block_length, settings.threshold)
    try:
        _, ids, params = prepare(engine.model, mode=policy, **prompt, **settings.params)
    except ValueError as exc:
        raise RequestError(400, str(exc), _field_of(str(exc), next(iter(prompt)))) from None
    engine.check_fits(policy, len(ids), params.max_new_tokens)
    return params


@FUZZ
@given(st.sampled_from(["completion", "chat"]),
       st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=8))
def test_request_parameters_raise_only_value_errors(served, kind, body) -> None:
    engine, defaults = served
    body = {"model": "model", "prompt": "x", "messages": [{"role": "user", "content": "x"}], **body}
    body.pop("messages" if kind == "completion" else "prompt")
    allowed(translate, engine, defaults, kind, body)
