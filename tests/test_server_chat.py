"""``POST /v1/chat/completions`` through the ``openai`` client, on a model whose tokenizer has a chat template.

The server is ``graphrt serve`` on the shipped model in float64; its tokenizer's
chat template (read by ``transformers.AutoTokenizer``) renders the messages.
"""

from __future__ import annotations

import openai
import pytest

import graphrt
from support.server_harness import MODEL_NAME, server

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MESSAGES = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "def parse(x):\n"}]


@pytest.fixture(scope="module")
def client():
    with server(["--dtype", "float64", "--max-batch", "2"]) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def offline():
    return graphrt.load(dtype="float64", max_batch=1)


def _prompt_ids(offline) -> list[int]:
    return offline.tokenizer.encode_chat(MESSAGES)


@pytest.mark.parametrize("mode", ["ar", "self-spec-quadratic"])
def test_chat_equals_offline_generate_on_the_templated_prompt(client, offline, mode) -> None:
    resp = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=16, temperature=0,
                                          extra_body={"mode": mode})
    ids = _prompt_ids(offline)
    ref = graphrt.generate(offline, messages=MESSAGES, mode=mode, max_new_tokens=16)
    msg = resp.choices[0].message
    assert msg.role == "assistant" and msg.content == ref.text
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
    assert resp.usage.prompt_tokens == len(ids) and resp.usage.completion_tokens == len(ref.tokens)
    assert resp.model_extra["graphrt"]["forwards"] == ref.forwards


def test_chat_stream_deltas_add_up_to_the_message(client) -> None:
    whole = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=20, temperature=0.7,
                                           seed=3, extra_body={"mode": "diffusion"})
    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=20,
                                                 temperature=0.7, seed=3, stream=True,
                                                 extra_body={"mode": "diffusion"}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert content == whole.choices[0].message.content and len(chunks) > 3
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_chat_logprobs_and_max_completion_tokens(client, offline) -> None:
    resp = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_completion_tokens=8,
                                          temperature=0, logprobs=True)
    ref = graphrt.generate(offline, _prompt_ids(offline), mode="ar", max_new_tokens=8, logprobs=True)
    content = resp.choices[0].logprobs.content
    assert [c.logprob for c in content] == pytest.approx(ref.logprobs, abs=1e-9)
    assert "".join(c.token for c in content) == resp.choices[0].message.content


def test_chat_message_content_parts(client) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "def parse"}, {"type": "text", "text": "(x):\n"}]}]
    a = client.chat.completions.create(model=MODEL_NAME, messages=parts, max_tokens=6, temperature=0)
    b = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "def parse(x):\n"}],
                                       max_tokens=6, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
