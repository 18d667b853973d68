"""The drafter's chat data: the base model's own greedy answers to questions written for training."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import graphrt
from graphrt.frontends.fixtures import write_transformers_checkpoint
from graphrt.frontends.training import chat_data, corpus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "prompts"))
import build_prompts  # noqa: E402  (the held-out benchmark prompts)


def test_the_training_questions_are_not_the_benchmark_prompts() -> None:
    questions = chat_data.written_questions()
    assert len(questions) == len(set(questions)) > 100
    assert not set(questions) & set(build_prompts.CHAT_QUESTIONS)


def test_code_edits_use_only_training_functions() -> None:
    files = corpus.load_corpus()
    picked = chat_data.training_functions(files, 40, seed=0)
    assert len(picked) == 40
    by_path = {f.path: f for f in files}
    for path, src in picked:
        assert by_path[path].split == "train" and not corpus.is_test_file(path)
        assert src.startswith(("def ", "async def ")) and 4 <= len(src.splitlines()) <= 24
    held_out_functions = {name for _, name, _ in build_prompts.CODE_EDITS}
    assert not {src.split("(")[0].split()[-1] for _, src in picked} & held_out_functions


def test_the_stream_is_each_prompt_and_its_greedy_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_transformers_checkpoint("llama", tmp_path / "base")
    convs = [[{"role": "user", "content": "hello there"}], [{"role": "user", "content": "write a loop"}],
             [{"role": "user", "content": "x"}]]
    monkeypatch.setattr(chat_data, "training_conversations", lambda files, n, seed, n_explains=0: convs)
    stream, starts, record = chat_data.chat_answer_stream(str(root), tmp_path / "run", 0, 6, 2, 0, progress=False)
    model = graphrt.load(root)
    ends = np.append(starts[1:], stream.size)
    assert record["conversations"] == len(starts) == 3 and record["tokens"] == stream.size
    for conv, s, e in zip(convs, starts, ends):
        prompt = model.tokenizer.encode_chat(conv)
        answer = graphrt.chat(model, conv, max_new_tokens=6).tokens
        want = prompt + answer + ([] if answer and answer[-1] in model.eos_token_ids else [model.eos_token_ids[0]])
        assert stream[s:e].tolist() == want
    monkeypatch.setattr(graphrt, "load", lambda *a, **k: pytest.fail("regenerated"))
    again, _, _ = chat_data.chat_answer_stream(str(root), tmp_path / "run", 0, 6, 2, 0, progress=False)
    assert np.array_equal(again, stream)  # cached


def test_conversation_windows_start_inside_one_conversation() -> None:
    lengths = [5, 30, 7, 12]
    stream = np.concatenate([np.full(n, i, dtype=np.uint16) for i, n in enumerate(lengths)])
    starts = np.cumsum([0] + lengths[:-1])
    rows = chat_data.conversation_windows(stream, starts, 200, 10, torch.Generator().manual_seed(0))
    assert rows.shape == (200, 10)
    for row in rows.tolist():
        first = row[0]
        if lengths[first] >= 10:
            assert row == [first] * 10  # a long conversation keeps the row inside it
        else:
            offset = int(starts[first])
            assert row == stream[offset:offset + 10].tolist() or row == stream[-10:].tolist()  # begins it
    assert set(rows[:, 0].tolist()) == set(range(len(lengths)))
    with pytest.raises(ValueError, match="expected a stream longer than 64 tokens, found 54"):
        chat_data.conversation_windows(stream, starts, 1, 64, torch.Generator())


def test_explain_requests_take_other_training_functions_and_leave_the_edits_as_they_were() -> None:
    files = corpus.load_corpus()
    edits = chat_data.training_conversations(files, 12, seed=1)
    both = chat_data.training_conversations(files, 12, seed=1, n_explains=8)
    assert both[:len(edits)] == edits  # the cached stream of a run without explains stays valid
    asked = [c[0]["content"] for c in both[len(edits):]]
    assert len(asked) == 8 and all(a.split("\n\n")[0] in chat_data.EXPLAIN_REQUESTS for a in asked)
    edited = {c[0]["content"].split("```python\n")[1] for c in edits[-12:]}
    explained = {a.split("```python\n")[1] for a in asked}
    assert not edited & explained
