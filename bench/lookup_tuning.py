"""Prompt-lookup settings for a model, chosen by replaying its own greedy decoding.

Prompt-lookup decoding emits exactly AR's tokens, so how far its drafts get is a function of the AR
output alone: for a recorded greedy conversation (prompt + answer), replaying the lookup op
(:func:`graphrt.ngram.ngram_lookup_ref`, the op's own reference) cycle by cycle gives every cycle's
accepted length without running the model. Each setting's tokens per forward (TPF) then becomes an
expected speed with the measured cost of a verify forward of its width:

    tok/s(setting) ~ TPF / T(width),   width = block length

Input: conversations answered greedily by the model, as written by ``graphrt train --chat-rows``
(``RUN/data/chat.npy`` and ``chat_starts.npy``: the base model's answers to the training questions
and code-edit requests, never the benchmark's held-out prompts)::

    python bench/lookup_tuning.py --run runs/drafter3 --model smollm2 \
        --forward-ms 1:52.9,4:48.9,8:53.3,16:73.2 --out bench/results/lookup_tuning_smollm2

``--forward-ms`` gives the measured forward time by width (``graphrt bench --model smollm2
--forward-widths 1,4,8,16``); without it every width costs the same and TPF decides.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from graphrt.ngram import ngram_lookup_ref


def replay(tokens: list[int], prompt_len: int, block: int, max_ngram: int, min_ngram: int) -> tuple[int, int]:
    """Prompt-lookup decoding of a recorded greedy answer: ``(tokens emitted, verify forwards)``.

    The prefill emits the first answer token; every cycle then verifies ``[seed, draft...]`` (width
    ``block``) and emits the accepted drafts plus AR's token after them.
    """
    ctx = torch.tensor(tokens, dtype=torch.int64)
    pos = prompt_len + 1  # the prompt and the prefill's token are in the context
    forwards = 1
    while pos < len(tokens):
        draft, _ = ngram_lookup_ref(ctx, torch.tensor(pos), k=block - 1, max_ngram=max_ngram, min_ngram=min_ngram)
        want = tokens[pos:pos + block - 1]
        k = 0
        while k < len(want) and int(draft[k]) == want[k]:
            k += 1
        pos += k + 1
        forwards += 1
    return len(tokens) - prompt_len, forwards


def conversations(run: Path, tokenizer) -> list[tuple[list[int], int, str]]:
    """``(tokens, prompt length, kind)`` of every recorded conversation (``code_edit`` or ``chat``)."""
    stream = np.load(run / "data" / "chat.npy").astype(np.int64)
    starts = np.load(run / "data" / "chat_starts.npy")
    ends = np.append(starts[1:], stream.size)
    marker = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    out = []
    for s, e in zip(starts, ends):
        toks = stream[s:e].tolist()
        cut = next(i + len(marker) for i in range(len(toks) - len(marker), -1, -1)
                   if toks[i:i + len(marker)] == marker)
        kind = "code_edit" if "```python" in tokenizer.decode(toks[:cut]) else "chat"
        out.append((toks, cut, kind))
    return out


def main() -> None:
    """Replay every setting of the grid on every conversation; write the table (and JSON)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a drafter run directory with data/chat.npy")
    p.add_argument("--model", default="smollm2", help="whose tokenizer reads the conversations")
    p.add_argument("--blocks", default="4,8,16")
    p.add_argument("--max-ngrams", default="2,3,4")
    p.add_argument("--min-ngrams", default="1,2,3")
    p.add_argument("--forward-ms", default="", help="width:ms,... measured forward times")
    p.add_argument("--out", default=None, help="writes OUT.md and OUT.json")
    args = p.parse_args()
    import graphrt

    tok = graphrt.load(args.model).tokenizer
    convs = conversations(Path(args.run), tok)
    ms = {int(w): float(t) for w, t in (x.split(":") for x in args.forward_ms.split(",") if x)}
    rows = []
    for block in map(int, args.blocks.split(",")):
        for hi in map(int, args.max_ngrams.split(",")):
            for lo in (n for n in map(int, args.min_ngrams.split(",")) if n <= hi):
                by_kind: dict[str, list[float]] = {}
                for toks, cut, kind in convs:
                    n, f = replay(toks, cut, block, hi, lo)
                    by_kind.setdefault(kind, []).append(n / f)
                cost = ms.get(block, 1.0) / ms.get(1, 1.0) if ms else 1.0
                row = {"block": block, "max_ngram": hi, "min_ngram": lo, "relative_forward_cost": round(cost, 3)}
                for kind, tpfs in sorted(by_kind.items()):
                    row[f"{kind}_tpf"] = round(statistics.mean(tpfs), 3)
                    row[f"{kind}_speedup"] = round(statistics.mean(tpfs) / cost, 3)
                rows.append(row)
                print(json.dumps(row), flush=True)
    kinds = sorted({k[:-4] for r in rows for k in r if k.endswith("_tpf")})
    lines = [f"# prompt-lookup settings replayed on {len(convs)} greedy conversations ({args.model})", "",
             "Speed-up = mean TPF / (forward time at the block width / 1-token forward time): the expected "
             "tok/s against AR.", "",
             "| block | max n | min n | " + " | ".join(f"{k} TPF | {k} speed-up" for k in kinds) + " |",
             "|---|---|---|" + "---|---|" * len(kinds)]
    for r in rows:
        lines.append(f"| {r['block']} | {r['max_ngram']} | {r['min_ngram']} | "
                     + " | ".join(f"{r[k + '_tpf']:.2f} | {r[k + '_speedup']:.2f}x" for k in kinds) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out + ".md").write_text(text)
        Path(args.out + ".json").write_text(json.dumps({"forward_ms": ms, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
