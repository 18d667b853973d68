"""Copy a finished ``graphrt train`` run's model into the package (``frontends/model/``).

Usage::

    python bench/ship_model.py RUN_DIR [--dtype float32|float16|bfloat16]

Checks before copying: the run finished (``RUN_DIR/model/training_record.json``
exists), the checkpoint loads, the tokenizer round-trips the held-out split,
and the weights fit the 25 MB package-data budget (re-saved in ``--dtype``
when given). Also copies the run's loss curves to
``bench/shipped_model_loss_curves.png`` / ``bench/shipped_model_train_log.csv``
and writes ``bench/shipped_model_drafts.json`` (held-out loss and draft quality
on 256 prefixes, see ``bench/measure_drafts.py``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "frontends" / "model"
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "training_record.json")
BUDGET_BYTES = 25 * 1000 * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "bench"))
    from measure_drafts import main as measure_main

    from graphrt.frontends.training import corpus

    from graphrt.frontends.checkpoint import load_checkpoint, save_checkpoint
    from graphrt.frontends.tokenizer import Tokenizer

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
    SHIPPED.mkdir(parents=True, exist_ok=True)
    for name in FILES:
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


if __name__ == "__main__":
    sys.exit(main())
