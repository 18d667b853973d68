"""The drafter release tool: records chained, machine paths mapped to names, worse drafts refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graphrt.frontends.training import ship_drafter

CONFIG = {"r": 32, "target_modules": ["q_proj", "o_proj"], "trainable_token_indices": {"embed_tokens": [7]},
          "base_model_name_or_path": "smollm2"}


def _record(steps: int, tokens: int, accepted: float, **extra: object) -> dict:
    return {"steps": steps, "tokens_seen": tokens, "final": {"draft_mean_accepted": accepted}, **extra}


def _layout(tmp_path: Path, accepted: float) -> tuple[Path, Path, Path]:
    shipped, results, run = tmp_path / "shipped", tmp_path / "results", tmp_path / "runs" / "drafter4"
    shipped.mkdir()
    (shipped / "adapter_config.json").write_text(json.dumps(CONFIG))
    (shipped / "adapter_model.safetensors").write_bytes(b"old")
    (shipped / "training_record.json").write_text(json.dumps(_record(
        945, 725_760, 1.84, continued_from={"record": "results/run1_training_record.json", "steps": 176,
                                            "tokens_seen": 180_224},
        tokens_seen_all_runs=905_984, corpus={"stdlib_root": "/opt/python/lib/python3.11"}, args={"out": "runs/d3"})))
    (run / "drafter").mkdir(parents=True)
    cache = "/home/someone/.cache/graphrt/gguf/abc-float32-v1"
    (run / "drafter" / "adapter_config.json").write_text(json.dumps({**CONFIG, "base_model_name_or_path": cache}))
    (run / "drafter" / "adapter_model.safetensors").write_bytes(b"new")
    (run / "drafter" / "training_record.json").write_text(json.dumps(_record(
        800, 614_400, accepted, corpus={"stdlib_root": "/opt/python/lib/python3.11"},
        args={"out": str(run.resolve()), "init_from": cache,
              "init_adapter": str(ship_drafter.ROOT / "frontends/models/smollm2/drafter")},
        resume={"checkpoint": str(run.resolve() / "ckpt.pt")})))
    (run / "train_log.csv").write_text("step,loss\n")
    return shipped, results, run


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_a_better_run_ships_with_its_history_and_no_machine_path(tmp_path: Path) -> None:
    shipped, results, run = _layout(tmp_path, accepted=2.1)
    assert ship_drafter.main([str(run), "--into", str(shipped), "--results", str(results)]) == 0
    assert (shipped / "adapter_model.safetensors").read_bytes() == b"new"
    record = json.loads((shipped / "training_record.json").read_text())
    archived = json.loads((results / "run2_training_record.json").read_text())
    assert archived["steps"] == 945 and (results / "run3_train_log.csv").is_file()
    assert record["continued_from"]["record"].endswith("run2_training_record.json")
    assert record["continued_from"]["steps"] == 945
    assert record["tokens_seen_all_runs"] == 905_984 + 614_400
    assert record["args"]["out"] == "runs/drafter4" and record["args"]["init_from"] == "smollm2"
    assert record["args"]["init_adapter"] == "frontends/models/smollm2/drafter"
    assert record["corpus"]["stdlib_root"] == archived["corpus"]["stdlib_root"] == "lib/python3.11"
    config = json.loads((shipped / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "smollm2"
    for doc in (record, archived, config):
        assert not [s for s in _strings(doc) if s.startswith("/") and "run2_training_record" not in s]


def test_a_run_started_from_an_unshipped_run_continues_that_run(tmp_path: Path) -> None:
    """Run 3 shipped, run 4 kept in the results (not shipped), run 5 started from run 4: run 5 is run 5."""
    shipped, results, run = _layout(tmp_path, accepted=2.1)
    kept = results / "run4"
    kept.mkdir(parents=True)
    (kept / "training_record.json").write_text(json.dumps(_record(
        547, 420_096, 1.80, tokens_seen_all_runs=1_944_320, not_shipped="mean accepted 1.80 against 1.84")))
    record = json.loads((run / "drafter" / "training_record.json").read_text())
    record["args"]["init_adapter"] = str(kept)
    (run / "drafter" / "training_record.json").write_text(json.dumps(record))
    assert ship_drafter.main([str(run), "--into", str(shipped), "--results", str(results)]) == 0
    shipped_record = json.loads((shipped / "training_record.json").read_text())
    assert (results / "run2_training_record.json").is_file(), "the shipped record is archived under its number"
    assert (results / "run5_train_log.csv").is_file() and not (results / "run3_train_log.csv").exists()
    assert shipped_record["continued_from"]["record"].endswith("run4/training_record.json")
    assert shipped_record["continued_from"]["steps"] == 547
    assert shipped_record["tokens_seen_all_runs"] == 1_944_320 + 614_400
    # the next run, from the shipped adapter, is run 6: the shipped run 5 is archived under its own number
    record["args"]["init_adapter"] = str(ship_drafter.ROOT / "frontends/models/smollm2/drafter")
    (run / "drafter" / "training_record.json").write_text(json.dumps(record))
    assert ship_drafter.main([str(run), "--into", str(shipped), "--results", str(results)]) == 0
    assert json.loads((results / "run5_training_record.json").read_text())["continued_from"]["steps"] == 547
    assert (results / "run6_train_log.csv").is_file()
    assert json.loads((shipped / "training_record.json").read_text())["continued_from"]["record"].endswith(
        "run5_training_record.json")


def test_worse_drafts_are_refused_unless_forced(tmp_path: Path) -> None:
    shipped, results, run = _layout(tmp_path, accepted=1.5)
    with pytest.raises(SystemExit, match=r"mean accepted drafts 1.5 is below the shipped 1.84"):
        ship_drafter.main([str(run), "--into", str(shipped), "--results", str(results)])
    assert (shipped / "adapter_model.safetensors").read_bytes() == b"old"
    assert ship_drafter.main([str(run), "--into", str(shipped), "--results", str(results), "--force"]) == 0


def test_an_unmapped_machine_path_is_refused_by_key() -> None:
    with pytest.raises(ValueError, match=r"training_record.args.data: expected a path inside .* found the machine "
                                         r"path '/srv/data'"):
        ship_drafter.portable({"args": {"data": "/srv/data"}}, {"/srv/repo": "."}, "training_record")
    assert ship_drafter.portable(["/srv/repo/x", "rel"], {"/srv/repo": "."}, "r") == ["x", "rel"]
    assert ship_drafter.portable("abc-/cache/m-v1-192", {"/cache/m-v1": "smollm2"}, "key") == "abc-smollm2-192"
