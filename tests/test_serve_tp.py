"""``torchrun --nproc-per-node 2 -m graphrt serve --tp 2``: the tensor-parallel server answers as TP = 1 does.

One launch (two gloo processes on 127.0.0.1, ``--tp-check``) serves the release-layout
random checkpoint in float64 (YaRN, the PEFT drafter sharded with ``o_proj``, an odd
vocabulary split unevenly). Concurrent requests of every mode, at T = 0 and at T > 0
with seeds, share the ranks' steps; each completion must equal ``graphrt.generate``
on the TP = 1 model token for token. Then rank 0 is sent SIGTERM, as a user stopping
the server would: both ranks must exit cleanly (torchrun returns 0 only if both did).
"""

from __future__ import annotations

import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch

import graphrt
from graphrt.frontends.fixtures import write_release_checkpoint
from support.server_harness import metric, server_process, torchrun_serve

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PROMPTS = ["def parse_args(argv):\n", "import os\n", "class A:\n"]
# (mode, temperature, seed): every mode greedy, three sampled
CASES = [("ar", 0.0, None), ("diffusion", 0.0, None), ("self-spec", 0.0, None), ("self-spec-quadratic", 0.0, None),
         ("ar", 0.8, 5), ("diffusion", 0.8, 6), ("self-spec", 0.8, 7)]
MAX_TOKENS = 10


def rank_pids(torchrun: subprocess.Popen) -> dict[int, int]:
    """The worker processes of a torchrun process by ``RANK`` (read from /proc)."""
    children: list[int] = []
    for task in Path(f"/proc/{torchrun.pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    ranks = {}
    for pid in children:
        env = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)
        if "RANK" in env:
            ranks[int(env["RANK"])] = pid
    return ranks


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_release_checkpoint(tmp_path_factory.mktemp("serve_tp") / "release", dtype=torch.float64)


def test_tp2_server_answers_as_tp1_and_stops_cleanly(checkpoint: Path) -> None:
    args = ["--model", str(checkpoint), "--dtype", "float64", "--max-batch", "4", "--max-seq-len", "96",
            "--tp-check"]
    with server_process(torchrun_serve(2), args, timeout=120) as (url, torchrun):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)

        def complete(i: int) -> openai.types.Completion:
            mode, temperature, seed = CASES[i]
            return client.completions.create(model=checkpoint.name, prompt=PROMPTS[i % len(PROMPTS)],
                                             max_tokens=MAX_TOKENS, temperature=temperature, seed=seed, logprobs=0,
                                             extra_body={"mode": mode})

        with ThreadPoolExecutor(len(CASES)) as pool:
            responses = list(pool.map(complete, range(len(CASES))))
        calls = metric(url, "graphrt_backbone_calls_total")
        ranks = rank_pids(torchrun)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[0], signal.SIGTERM)  # stop the server as a user would; rank 0 then stops rank 1
        try:
            rc = torchrun.wait(timeout=30)
        except subprocess.TimeoutExpired:
            rc = None
        log = torchrun.stdout.read() if rc is not None else ""  # type: ignore[union-attr]
    assert rc == 0, f"torchrun (both ranks) should exit 0 after SIGTERM to rank 0, found {rc}:\n{log[-4000:]}"
    assert "Traceback" not in log, log[-4000:]
    assert not any(Path(f"/proc/{pid}").exists() for pid in ranks.values())

    model = graphrt.load(checkpoint, dtype="float64", max_batch=1)
    forwards = 0
    for i, ((mode, temperature, seed), resp) in enumerate(zip(CASES, responses)):
        ref = graphrt.generate(model, PROMPTS[i % len(PROMPTS)], mode=mode, max_new_tokens=MAX_TOKENS,
                               temperature=temperature, seed=seed or 0, logprobs=True)
        choice, where = resp.choices[0], f"{mode} at T={temperature}"
        assert choice.logprobs.tokens == [model.tokenizer.decode([t]) for t in ref.tokens], where
        assert choice.logprobs.token_logprobs == pytest.approx(ref.logprobs, abs=1e-9), where
        assert choice.text == ref.text and resp.usage.completion_tokens == len(ref.tokens), where
        assert resp.model_extra["graphrt"]["forwards"] == ref.forwards, where
        forwards += ref.forwards
    assert calls < forwards, f"{calls} backbone calls for {forwards} forwards: the requests shared no step"

