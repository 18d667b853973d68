"""Copy a finished ``graphrt train`` run's model into the package (``frontends/model/``): a release tool.

Usage::

    python -m graphrt.frontends.training.ship_model RUN_DIR [--dtype float32|float16|bfloat16]

Checks before copying: the run finished (``RUN_DIR/model/training_record.json``
exists), the checkpoint loads, the tokenizer round-trips the held-out split,
and the weights fit the 25 MB package-data budget (re-saved in ``--dtype``
when given). Replacing a shipped model also needs the new one to be no worse
on held-out AR loss (``final.heldout_ar_loss`` of both records, the same fixed
windows) and, with ``--eval BEFORE.json AFTER.json`` (``graphrt eval`` of the
shipped and the new model on the same prompts), a higher TPF in both
self-speculation modes (whose drafts the model makes); ``--force`` skips these two checks. When the
tokenizer is unchanged the shipped tokenizer files (chat template included)
are kept. Also copies the run's loss curves to
``bench/shipped_model_loss_curves.png`` / ``bench/shipped_model_train_log.csv``
and writes ``bench/shipped_model_drafts.json`` (held-out loss and draft quality
on 256 prefixes, see :mod:`.measure_drafts`). Run it from a source checkout: it writes into the
repository's ``frontends/model/`` and ``bench/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository: frontends/training/ship_model.py
SHIPPED = ROOT / "frontends" / "model"
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "training_record.json")
BUDGET_BYTES = 25 * 1000 * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None)
    p.add_argument("--eval", nargs=2, metavar=("BEFORE", "AFTER"), default=None,
                   help="graphrt eval JSON of the shipped and the new model (TPF must improve)")
    p.add_argument("--force", action="store_true", help="ship even if held-out AR loss or TPF got worse")
    args = p.parse_args(argv)
    from graphrt.frontends.models.checkpoint import load_checkpoint, save_checkpoint
    from graphrt.frontends.models.tokenizer import Tokenizer
    from graphrt.frontends.training import corpus
    from graphrt.frontends.training.measure_drafts import main as measure_main

    src = Path(args.run_dir) / "model"
    if not (src / "training_record.json").is_file():
        raise ValueError(f"ship_model: expected a finished run with {src / 'training_record.json'}, found none")
    config, model = load_checkpoint(src)
    tok = Tokenizer.from_dir(src)
    held = corpus.split_texts(corpus.load_corpus(), "heldout")
    for f, ids in zip(held, tok.encode_batch([f.text for f in held])):
        if tok.decode(ids) != f.text:
            raise ValueError(f"ship_model: expected the tokenizer to round-trip {f.path}, found a difference")
    if args.dtype is not None:
        save_checkpoint(model, config, src, dtype=getattr(torch, args.dtype))
    size = (src / "model.safetensors").stat().st_size
    if size > BUDGET_BYTES:
        raise ValueError(f"ship_model: expected weights <= {BUDGET_BYTES} bytes, found {size} in {src} "
                         f"(pass --dtype float16)")
    if not args.force:
        check_improves(src, args.eval)
    SHIPPED.mkdir(parents=True, exist_ok=True)
    same_tokenizer = (SHIPPED / "tokenizer.json").is_file() and \
        (SHIPPED / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    for name in FILES:
        if same_tokenizer and name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            continue
        shutil.copy2(src / name, SHIPPED / name)
    run = Path(args.run_dir)
    for name, dest in (("loss_curves.png", "shipped_model_loss_curves.png"),
                       ("train_log.csv", "shipped_model_train_log.csv")):
        if (run / name).is_file():
            shutil.copy2(run / name, ROOT / "bench" / dest)
    out = ROOT / "bench" / "shipped_model_drafts.json"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        measure_main([str(SHIPPED), "--prompts", "256", "--prefix-len", "128"])
    out.write_text(json.dumps(json.loads(buf.getvalue()), indent=1) + "\n")
    print(f"shipped {src} -> {SHIPPED} ({size / 1e6:.1f} MB); drafts: {out}")
    return 0


SPECULATIVE = ("self-spec", "self-spec-quadratic")  # the modes whose drafts the model makes


def check_improves(src: Path, evals: list[str] | None) -> None:
    """Refuse a model with a worse held-out AR loss than the shipped one, or (given evals) a lower TPF.

    Parameters
    ----------
    src : Path
        The new model directory (with ``training_record.json``).
    evals : list[str] or None
        ``[before.json, after.json]`` from ``graphrt eval``.

    Raises
    ------
    ValueError
        Naming the figure that got worse.
    """
    shipped = SHIPPED / "training_record.json"
    if shipped.is_file():
        old = json.loads(shipped.read_text())["final"]["heldout_ar_loss"]
        new = json.loads((src / "training_record.json").read_text())["final"]["heldout_ar_loss"]
        if new > old:
            raise ValueError(f"ship_model: expected held-out AR loss <= the shipped {old}, found {new} in {src}")
    if evals is None:
        return
    before, after = ({r["mode"]: r for r in json.loads(Path(f).read_text()) if r["threshold"] is None}
                     for f in evals)
    modes = [m for m in SPECULATIVE if m in before and m in after]
    if not modes:
        raise ValueError(f"ship_model: expected speculative modes in both {evals[0]} and {evals[1]}, found none")
    for m in modes:
        if after[m]["tpf"] <= before[m]["tpf"]:
            raise ValueError(f"ship_model: expected a higher {m} TPF than the shipped {before[m]['tpf']:.3f}, "
                             f"found {after[m]['tpf']:.3f} ({evals[1]})")
        if after[m]["identical_to_ar"] < before[m]["identical_to_ar"]:
            raise ValueError(f"ship_model: expected {m} identical to AR on at least {before[m]['identical_to_ar']}, "
                             f"found {after[m]['identical_to_ar']} ({evals[1]})")


if __name__ == "__main__":
    sys.exit(main())
