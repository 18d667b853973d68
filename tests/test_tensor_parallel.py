"""Tensor parallelism: TP = 2 (two gloo processes launched by torchrun) gives TP = 1's tokens in every mode.

One launch covers everything (it costs a few seconds of process start-up): each
rank loads two tiny random float64 checkpoints in cross-rank check mode, decodes
every mode (at T = 0 and T > 0, and a mixed-mode session), runs
``graphrt generate --tp 2`` on the shipped model and exchanges a serving engine's turn
(:mod:`graphrt.frontends.serving.lockstep`); the test compares what the ranks
wrote with TP = 1 in this process. The checkpoints: ``release``, the release layout
(YaRN, query scaling, sharded safetensors with an index, the PEFT drafter on
``o_proj``, an odd vocabulary of 401 split unevenly); ``tied``, tied embeddings,
q/k/v biases, q/k norms and 4 query heads per KV head.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import graphrt
from graphrt.api import prepare
from graphrt.cost_model import CostModel
from graphrt.frontends.models.checkpoint import random_checkpoint
from graphrt.frontends.models.config import default_test_config
from graphrt.frontends.fixtures import write_release_checkpoint
from graphrt.frontends.policies import MODES
from graphrt.params import GenerationParams
from graphrt.session import Session

PROMPTS = ([5, 17, 33, 8, 61], [9, 4, 71])
NAMES = ("release", "tied")
CASES = {"release": [(mode, t) for mode in MODES for t in (0.0, 0.8)], "tied": [(mode, 0.0) for mode in MODES]}


def write_checkpoints(root: Path) -> None:
    """Write the test checkpoints (float64) under ``root``, one per name of :data:`NAMES`."""
    write_release_checkpoint(root / "release", dtype=torch.float64)
    tied = default_test_config(tie_word_embeddings=True, attention_bias=True, qk_norm=True, num_attention_heads=8,
                               num_key_value_heads=2, head_dim=4)
    random_checkpoint(root / "tied", tied, seed=1, dtype=torch.float64)


def decode_all(model: graphrt.Model, name: str) -> dict[str, object]:
    """Tokens and forward counts of checkpoint ``name``'s cases, plus a two-request mixed-mode session."""
    out: dict[str, object] = {}
    for mode, temperature in CASES[name]:
        # priced by the prior on both sides (a tensor-parallel session never calibrates on its own), so mode auto
        # makes the same choices, and the same number of forwards, at TP=1 and TP=2
        session = Session(model.backbone, model.tokenizer, cost_model=CostModel())
        rid = session.add(*prepare(model, PROMPTS[0], mode=mode, max_new_tokens=8, temperature=temperature, seed=3,
                                   ignore_eos=True))
        res = session.run()[rid]
        out[f"{mode}@{temperature}"] = [res.tokens, res.forwards]
    if name != "release":
        return out
    session = Session(model.backbone)
    rids = [session.add(graphrt.compile(mode, model), prompt, GenerationParams(max_new_tokens=8, ignore_eos=True))
            for mode, prompt in zip(("self-spec-quadratic", "diffusion"), PROMPTS)]
    done = session.run()
    out["mixed"] = [done[r].tokens for r in rids]
    return out


def _cli(tp: int, out: Path) -> int:
    """``graphrt generate`` on the shipped model (float64, self-spec) writing its JSON record to ``out``."""
    from graphrt.frontends.cli import main as cli_main

    args = ["generate", "--prompt", "def f(", "--max-new-tokens", "8", "--dtype", "float64", "--mode", "self-spec",
            "--json", str(out)]
    return cli_main(args + (["--tp", str(tp), "--tp-check"] if tp > 1 else []))


def _worker(root: Path) -> None:
    """One rank (run under torchrun): decode every checkpoint in check mode, then the CLI."""
    from graphrt.frontends.models.tensor_parallel import assert_same_across_ranks

    rank = int(os.environ["RANK"])
    record: dict[str, object] = {}
    for name in NAMES:
        model = graphrt.load(root / name, dtype="float64", tp=2, tp_check=True, max_batch=2)
        bb = model.backbone
        got = decode_all(model, name)
        assert_same_across_ranks(bb.mesh, got, f"{name}: decoded tokens")
        record[name] = {"decode": got, "weight_bytes": bb.weight_bytes, "full_weight_bytes": bb.full_weight_bytes,
                        "kv_heads": bb.cache.kv_heads}
    record["cli_rc"] = _cli(2, root / "cli_tp2.json")
    record["lockstep"] = _lockstep(rank)
    (root / f"rank{rank}.json").write_text(json.dumps(record))


def _lockstep(rank: int) -> dict[str, object]:
    """The serving engines' exchange: rank 0's decision reaches every rank; differing step digests raise on all."""
    from graphrt.frontends.serving.lockstep import Admit, Decision, Lockstep, LockstepError

    lockstep = Lockstep(rank, 2)
    mine = Decision([Admit(("diffusion", 4, 0.5), [5, 17], GenerationParams(max_new_tokens=3, seed=9))], [2])
    got = lockstep.share(mine if rank == 0 else None, "same step")
    out: dict[str, object] = {"shared": got == mine, "error": None}
    try:
        lockstep.share(Decision() if rank == 0 else None, f"rank {rank}'s step")
    except LockstepError as exc:
        out["error"] = str(exc)
    return out


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("tp")
    write_checkpoints(root)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__, str(root)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return root, [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("name", NAMES)
def test_tp2_gives_tp1_tokens_in_every_mode(launched, name: str) -> None:
    root, ranks = launched
    want = json.loads(json.dumps(decode_all(graphrt.load(root / name, dtype="float64", max_batch=2), name)))
    for rank in ranks:
        got = rank[name]["decode"]
        assert got.keys() == want.keys()
        for case in want:
            assert got[case] == want[case], f"{name} {case}: TP=2 {got[case]} != TP=1 {want[case]}"


@pytest.mark.parametrize("name", NAMES)
def test_each_rank_holds_about_half_the_weights_and_its_kv_heads(launched, name: str) -> None:
    root, ranks = launched
    full = graphrt.load(root / name, dtype="float64").backbone.model
    full_bytes = sum(p.numel() * p.element_size() for p in full.parameters())  # tied weights counted once
    for rank in ranks:
        r = rank[name]
        assert r["full_weight_bytes"] == full_bytes
        assert 0.48 * full_bytes < r["weight_bytes"] < 0.56 * full_bytes, (r["weight_bytes"], full_bytes)
        assert r["kv_heads"] == full.config.num_key_value_heads // 2
    assert sum(rank[name]["weight_bytes"] for rank in ranks) >= full_bytes  # norms are replicated


def test_cli_generate_tp2_matches_tp1(launched, capsys: pytest.CaptureFixture[str]) -> None:
    root, ranks = launched
    assert [r["cli_rc"] for r in ranks] == [0, 0]
    assert _cli(1, root / "cli_tp1.json") == 0
    capsys.readouterr()
    tp1, tp2 = (json.loads((root / f"cli_tp{n}.json").read_text()) for n in (1, 2))
    assert len(tp2["tokens"]) == 8 and tp2["tokens"] == tp1["tokens"] and tp2["text"] == tp1["text"]


def test_serving_lockstep_shares_rank0s_decision_and_notices_a_rank_out_of_step(launched) -> None:
    _, ranks = launched
    for rank, record in enumerate(ranks):
        assert record["lockstep"]["shared"], f"rank {rank} did not get rank 0's decision"
        error = record["lockstep"]["error"]
        assert error is not None and f"rank {rank}: expected every rank's step" in error, error


def test_errors_name_what_was_expected(monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from graphrt.frontends.models.tensor_parallel import TensorParallelBackbone, check_shardable, init_tensor_parallel

    with pytest.raises(ValueError, match="expected compile False, True or 'freeze', found 'background'"):
        TensorParallelBackbone(None, None, compile="background")  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="--tp 3 must divide num_attention_heads"):
        check_shardable(default_test_config(), 3)
    with pytest.raises(ValueError, match="--tp 4 must divide num_key_value_heads"):
        check_shardable(default_test_config(), 4)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(sys, "argv", ["graphrt", "generate", "--prompt", "x", "--tp", "2"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("graphrt", run_name="__main__")  # python -m graphrt
    assert exit_.value.code == 2 and "expected 2 processes launched by torchrun" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="--tp 2 expected a world size of 2, found WORLD_SIZE=3"):
        init_tensor_parallel(2)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
