"""Ship a finished drafter run as a named model's adapter (``frontends/models/NAME/drafter/``): a release tool.

Usage::

    python -m graphrt.frontends.training.ship_drafter RUN_DIR [--model smollm2] [--force]

Checks before copying: the run exported its adapter (``RUN_DIR/drafter/`` with
``adapter_config.json``, ``adapter_model.safetensors`` and ``training_record.json``), the
adapter has the shipped one's rank, modules and mask token, and its held-out drafts are no
worse: ``final.draft_mean_accepted`` of both records, measured on the same evenly spaced
held-out prefixes (``--force`` skips this check). Then:

* the shipped record moves to ``bench/results/NAME_drafter/runN_training_record.json`` and
  the run's log and curves are copied beside it as ``run{N+1}_train_log.csv`` and
  ``run{N+1}_loss_curves.png``, so every run's record stays in the repository;
* the new record gains ``continued_from`` (the archived record, its steps and tokens) when
  the run started from the shipped adapter (``--init-adapter``), and
  ``tokens_seen_all_runs``;
* machine paths in the record and the adapter config are rewritten to names (the model's
  name, ``runs/RUN``, paths inside the repository, the standard library's ``lib/pythonX.Y``);
  a path it cannot map is an error, so none ships.

Run it from a source checkout: it writes into the repository.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from graphrt.frontends.models import named_models

ROOT = Path(__file__).resolve().parents[2]  # the repository: frontends/training/ship_drafter.py
FILES = ("adapter_config.json", "adapter_model.safetensors", "training_record.json")


def run_number(record: dict[str, Any]) -> int:
    """The shipped record's run number: one more than the run it continued (1 when it continued none)."""
    prev = record.get("continued_from")
    if not prev:
        return 1
    path = Path(prev["record"])  # runN_training_record.json, or runN/training_record.json (an unshipped run)
    name = path.parent.name if path.name == "training_record.json" else path.name.split("_", 1)[0]
    return int(name.removeprefix("run")) + 1


def portable(value: Any, names: dict[str, str], where: str) -> Any:
    """``value`` with every path under a prefix of ``names`` rewritten to its name (longest prefix first),
    whole strings and paths inside longer ones (cache keys).

    Raises
    ------
    ValueError
        A string is an absolute path that no prefix of ``names`` maps; the message names its key.
    """
    if isinstance(value, dict):
        return {k: portable(v, names, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, names, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    for prefix in sorted(names, key=len, reverse=True):
        prefix = prefix.rstrip("/")
        if value == prefix or value.startswith(prefix + "/"):
            rest = value[len(prefix):]
            return (rest.lstrip("/") or ".") if names[prefix] == "." else names[prefix] + rest
        if prefix in value:  # a path inside a longer string (a cache key)
            value = value.replace(prefix + "/" if names[prefix] == "." else prefix, "" if names[prefix] == "."
                                  else names[prefix])
    if not value.startswith("/"):
        return value
    raise ValueError(f"ship_drafter: {where}: expected a path inside the repository, the run or the base "
                     f"model's cache, found the machine path {value!r}")


def path_names(run: Path, record: dict[str, Any], model: str) -> dict[str, str]:
    """The machine prefixes a drafter run's files hold, and the names they ship as."""
    names = {str(ROOT): ".", str(run.resolve()): f"runs/{run.resolve().name}"}
    base = record.get("args", {}).get("init_from")
    if isinstance(base, str) and base.startswith("/"):
        names[base] = model
    stdlib = record.get("corpus", {}).get("stdlib_root")
    if isinstance(stdlib, str) and stdlib.startswith("/"):
        names[stdlib] = str(Path("lib") / Path(stdlib).name)
    return names


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _unshipped_parent(record: dict[str, Any], results: Path) -> tuple[Path, int] | None:
    """``(its record, its number)`` when ``record``'s run started from a run kept in ``results`` as ``runN/`` (one
    that was not shipped, its adapter and record archived there to continue from); else None."""
    init = record.get("args", {}).get("init_adapter")
    if init is None:
        return None
    init_dir = Path(init) if Path(init).is_absolute() else ROOT / init  # a relative path: from the repository
    name = init_dir.name.removeprefix("run")
    if init_dir.resolve().parent != results.resolve() or not name.isdigit():
        return None
    if not (init_dir / "training_record.json").is_file():
        raise SystemExit(f"ship_drafter: expected {init_dir / 'training_record.json'} (the run this one started "
                         f"from), found none")
    return init_dir / "training_record.json", int(name)


def main(argv: list[str] | None = None) -> int:
    """Check and ship ``RUN_DIR/drafter`` as the named model's adapter; returns the exit status."""
    p = argparse.ArgumentParser(prog="ship_drafter", description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="the graphrt train --adapter-rank run directory")
    p.add_argument("--model", default="smollm2", help="the named model whose drafter it becomes")
    p.add_argument("--force", action="store_true", help="ship even if its held-out drafts are worse")
    p.add_argument("--into", type=Path, default=None, help="the drafter directory (default: the named model's)")
    p.add_argument("--results", type=Path, default=None,
                   help="where run records and curves are kept (default: bench/results/MODEL_drafter)")
    args = p.parse_args(argv)
    src = args.run / "drafter"
    missing = [f for f in FILES if not (src / f).is_file()]
    if missing:
        raise SystemExit(f"ship_drafter: expected {', '.join(FILES)} in {src}, missing {', '.join(missing)}")
    entry = named_models.NAMED_MODELS.get(args.model)
    if entry is None or entry.adapter is None:
        raise SystemExit(f"ship_drafter: expected a named model with a drafter directory "
                         f"({sorted(k for k, e in named_models.NAMED_MODELS.items() if e.adapter)}), "
                         f"found {args.model!r}")
    dst = args.into or Path(named_models.__file__).resolve().parent / entry.adapter
    results = args.results or ROOT / "bench" / "results" / f"{args.model}_drafter"
    new = json.loads((src / "training_record.json").read_text())
    config = json.loads((src / "adapter_config.json").read_text())
    old = json.loads((dst / "training_record.json").read_text()) if (dst / "training_record.json").is_file() else None
    if old is not None:
        shipped_config = json.loads((dst / "adapter_config.json").read_text())
        keys = ("r", "target_modules", "trainable_token_indices")
        if [config.get(k) for k in keys] != [shipped_config.get(k) for k in keys]:
            raise SystemExit(f"ship_drafter: {src}: expected the shipped adapter's "
                             f"{ {k: shipped_config.get(k) for k in keys} }, found { {k: config.get(k) for k in keys} }")
        before, after = old["final"]["draft_mean_accepted"], new["final"]["draft_mean_accepted"]
        if after < before and not args.force:
            raise SystemExit(f"ship_drafter: {src}: held-out mean accepted drafts {after} is below the shipped "
                             f"{before} (--force ships it anyway)")
    unshipped = _unshipped_parent(new, results)  # started from a run kept in the results, never shipped
    names = {**path_names(args.run, new, args.model), str(results.resolve()): _shown(results)}
    new, config = portable(new, names, "training_record"), portable(config, names, "adapter_config")
    number = 1
    if old is not None:
        number = run_number(old) + 1
        archived = results / f"run{number - 1}_training_record.json"
        results.mkdir(parents=True, exist_ok=True)
        old_names = {**path_names(args.run, old, args.model), str(results.resolve()): _shown(results)}
        archived.write_text(json.dumps(portable(old, old_names, "shipped record"), indent=2) + "\n")
        parent, parent_record, parent_number = old, archived, number - 1
        if unshipped is not None:
            parent_record, parent_number = unshipped
            parent, number = json.loads(parent_record.read_text()), parent_number + 1
        if new.get("args", {}).get("init_adapter") is not None:
            new["continued_from"] = {
                "record": _shown(parent_record), "steps": parent["steps"], "tokens_seen": parent["tokens_seen"],
                "note": f"this run started from run {parent_number}'s adapter (--init-adapter) with a fresh optimizer"}
            new["tokens_seen_all_runs"] = (parent.get("tokens_seen_all_runs", parent["tokens_seen"])
                                           + new["tokens_seen"])
    results.mkdir(parents=True, exist_ok=True)
    for name, target in (("train_log.csv", "train_log.csv"), ("loss_curves.png", "loss_curves.png")):
        if (args.run / name).is_file():
            shutil.copyfile(args.run / name, results / f"run{number}_{target}")
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "adapter_model.safetensors", dst / "adapter_model.safetensors")
    (dst / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (dst / "training_record.json").write_text(json.dumps(new, indent=2) + "\n")
    print(f"shipped {src} as run {number} of {args.model}'s drafter ({_shown(dst)}); "
          f"held-out mean accepted {new['final']['draft_mean_accepted']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
