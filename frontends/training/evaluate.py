"""``graphrt eval``: accuracy, TPF and speed of every mode on held-out standard-library code.

Prompts are cut at line boundaries from the held-out split of the corpus; each
generates ``--max-new-tokens`` tokens (stopping early only at EOS). For each
mode the first generated line is compared with the true next line (exact
match, over all prompts and over those whose next line is not blank), next to
the trivial baseline that copies the previous line. TPF is tokens / forwards
summed over prompts; tokens/s comes from a separate one-request-at-a-time pass
over the first ``--speed-prompts`` prompts; ``identical_to_ar`` is the share of
prompts whose whole output equals AR's. The speculative modes (self-speculation,
prompt lookup) also report their histogram of accepted drafts per cycle.

Quality measures that tell the modes apart (the next-line exact match is
dominated by blank lines):

* ``prefix_match``: mean number of leading output tokens equal to the true
  continuation's (at most ``--max-new-tokens``);
* ``ar_loglik``: the AR model's mean log-likelihood per token of the output
  given the prompt (one causal forward; AR's own greedy output scores
  highest among likely texts, a diffusion output that drifts scores lower);
* ``repetition``: the share of the output's 4-grams that repeat an earlier
  4-gram of the same output, next to the same share in the true
  continuation (the ``true-continuation`` record, which also carries the AR
  model's log-likelihood of the true text).

With ``--prompt-file FILE.jsonl`` (records with ``messages``, rendered by the chat
template, or ``prompt`` text; ``bench/prompts/`` holds chat, code-edit and
continuation sets) the prompts are those instead; they have no true continuation,
so the next-line and prefix matches are not reported. For the speculative modes
``slot_acceptance`` gives, per draft slot ``j``, the share of cycles that reached
slot ``j`` whose slot ``j`` was accepted.

Writes ``--json`` (a list of records), ``--markdown`` (a table) and ``--plot``
(accuracy against TPF).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

DIFFUSION_THRESHOLDS = (0.5, 0.7, 0.9, 0.95)
EXCLUDED_PREFIXES = ("encodings/cp", "encodings/mac_", "encodings/iso")  # character tables: trivially predictable


CONTINUATION_LINES = 40  # lines of true continuation tokenized per prompt (enough for 64+ tokens)


@dataclass
class EvalPrompt:
    """One evaluation prompt: its ids, the true next line, the line before it, and the true continuation's ids."""

    ids: list[int]
    next_line: str | None  # None: a prompt from a file, with no true continuation
    previous_line: str | None
    source: str
    continuation: list[int] = field(default_factory=list)


def read_prompt_file(model: Any, path: str, max_new: int) -> list[EvalPrompt]:
    """The prompts of a JSONL file: each record's ``messages`` (through the chat template) or its raw text,
    ``prompt`` (or ``text``, as ``bench/prompts/continuation.jsonl`` writes it).

    Raises
    ------
    ValueError
        If a line is not a JSON object with ``messages``, ``prompt`` or ``text``.
    """
    from graphrt.api import prepare

    prompts = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        if not isinstance(rec, dict) or not ("messages" in rec or "prompt" in rec or "text" in rec):
            raise ValueError(f"eval --prompt-file {path}:{n}: expected an object with 'messages', 'prompt' or "
                             f"'text', found {line[:60]!r}")
        source = ({"messages": rec["messages"]} if "messages" in rec else
                  {"prompt": rec["prompt"] if "prompt" in rec else rec["text"]})
        _, ids, _ = prepare(model, mode="ar", max_new_tokens=max_new, **source)
        prompts.append(EvalPrompt(list(ids), None, None, str(rec.get("id", f"{path}:{n}"))))
    if not prompts:
        raise ValueError(f"eval --prompt-file {path}: expected at least one prompt, found none")
    return prompts


def make_prompts(tokenizer: Any, n: int, max_prompt_tokens: int, continuation_tokens: int = 64) -> list[EvalPrompt]:
    """``n`` prompts cut at line boundaries, spread evenly over the held-out files (fixed rule).

    Each file contributes cuts at evenly spaced lines (after its first 5); a prompt
    keeps its last ``max_prompt_tokens`` tokens (the tokenizer ends every line with a
    newline token, so a cut at a line boundary is a token boundary). ``continuation``
    holds the first ``continuation_tokens`` tokens of the text after the cut.
    """
    from graphrt.frontends.training.corpus import load_corpus, split_texts

    files = [f for f in split_texts(load_corpus(), "heldout")
             if not any(f.path.startswith(p) for p in EXCLUDED_PREFIXES)]
    if not files:
        raise ValueError("eval: expected held-out files in the corpus, found none")
    per_file = -(-n // len(files))
    prompts: list[EvalPrompt] = []
    for f in files:
        lines = f.text.splitlines(keepends=True)
        if len(lines) < 8:
            continue
        step = max(1, (len(lines) - 6) // per_file)
        for cut in range(6, len(lines), step)[:per_file]:
            head = tokenizer.encode("".join(lines[:cut]))
            whole = tokenizer.encode("".join(lines[:cut + CONTINUATION_LINES]))
            prompts.append(EvalPrompt(head[-max_prompt_tokens:], lines[cut].rstrip("\n"), lines[cut - 1].rstrip("\n"),
                                      f"{f.path}:{cut + 1}", whole[len(head):len(head) + continuation_tokens]))
    if len(prompts) < n:
        raise ValueError(f"eval: expected {n} prompts from the held-out files, found only {len(prompts)}")
    stride = len(prompts) / n
    return [prompts[int(i * stride)] for i in range(n)]


def first_line(text: str) -> str:
    """The first line of generated text (without its newline)."""
    return text.split("\n", 1)[0]


def prefix_match(output: list[int], truth: list[int]) -> int:
    """Number of leading tokens of ``output`` equal to ``truth``'s.

    Parameters
    ----------
    output, truth : list[int]

    Returns
    -------
    int
    """
    n = 0
    for a, b in zip(output, truth):
        if a != b:
            break
        n += 1
    return n


def repetition(tokens: list[int], n: int = 4) -> float:
    """Share of the ``n``-grams of ``tokens`` that repeat an earlier ``n``-gram of the same sequence.

    Parameters
    ----------
    tokens : list[int]
    n : int

    Returns
    -------
    float
        In ``[0, 1)``; 0 for a sequence shorter than ``n + 1`` tokens.
    """
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if len(grams) < 2:
        return 0.0
    return (len(grams) - len(set(grams))) / len(grams)


@torch.no_grad()
def ar_loglik(model: Any, prompts: list[EvalPrompt], outputs: list[list[int]], batch: int = 16) -> list[float]:
    """The AR model's mean log-likelihood per token of each output given its prompt.

    One causal forward per prompt (batched, right-padded); the mask token's
    logit is excluded as in decoding. An empty output scores ``nan``.

    Parameters
    ----------
    model : graphrt.Model
        A model whose backbone holds a :class:`~graphrt.frontends.models.transformer.Transformer`.
    prompts : list[EvalPrompt]
    outputs : list[list[int]]
        Token ids per prompt.
    batch : int
        Sequences per forward.

    Returns
    -------
    list[float]
    """
    net = model.backbone.model
    mask_id = model.config.mask_token_id
    scores: list[float] = []
    for i in range(0, len(prompts), batch):
        seqs = [(p.ids, o) for p, o in zip(prompts[i:i + batch], outputs[i:i + batch])]
        L = max(len(a) + len(o) for a, o in seqs)
        tokens = torch.zeros(len(seqs), L, dtype=torch.long)
        for r, (a, o) in enumerate(seqs):
            tokens[r, :len(a) + len(o)] = torch.tensor(a + o, dtype=torch.long)
        causal = torch.ones(L, L, dtype=torch.bool).tril().expand(len(seqs), L, L)
        logits = net.forward_dense(tokens, torch.arange(L).expand(len(seqs), L), causal).to(torch.float64)
        logits[..., mask_id] = float("-inf")
        logp = torch.log_softmax(logits, -1)  # [B, L, V]
        for r, (a, o) in enumerate(seqs):
            if not o:
                scores.append(float("nan"))
                continue
            pos = torch.arange(len(a) - 1, len(a) + len(o) - 1)
            scores.append(float(logp[r, pos, torch.tensor(o)].mean()))
    return scores


def run_config(model: Any, mode: str, threshold: float | None, prompts: list[EvalPrompt], max_new: int,
               batch: int, progress: Any) -> list[Any]:
    """Generate for every prompt with one mode, ``batch`` requests per session round."""
    import graphrt

    policy = graphrt.compile(mode, model, threshold=threshold)
    params = graphrt.GenerationParams(max_new_tokens=max_new)
    session = graphrt.Session(model.backbone, model.tokenizer)
    ids = [session.add(policy, p.ids, params) for p in prompts]
    done = 0
    while session.has_work:
        session.step()
        now = sum(session.done(i) for i in ids)
        progress.update(now - done)
        done = now
    return [session.result(i) for i in ids]


def time_config(model: Any, mode: str, threshold: float | None, prompts: list[EvalPrompt],
                max_new: int) -> float | None:
    """Median tokens/s of single-request generation over ``prompts`` (``None`` when there are none)."""
    import graphrt

    if not prompts:
        return None
    policy = graphrt.compile(mode, model, threshold=threshold)
    rates = []
    for p in prompts:
        t = time.perf_counter()
        r = graphrt.generate(model, p.ids, mode=policy, max_new_tokens=max_new)
        rates.append(len(r.tokens) / (time.perf_counter() - t))
    return statistics.median(rates)


def summarize(mode: str, threshold: float | None, results: list[Any], prompts: list[EvalPrompt],
              ar_tokens: list[list[int]] | None, tokens_per_s: float | None,
              logliks: list[float] | None = None) -> dict[str, Any]:
    """One JSON record for a mode (``logliks``: :func:`ar_loglik` of its outputs, when measured)."""
    hits = [first_line(r.text or "") == p.next_line for r, p in zip(results, prompts)]
    nonblank = [h for h, p in zip(hits, prompts) if (p.next_line or "").strip()]
    record: dict[str, Any] = {
        "mode": mode, "threshold": threshold, "n_prompts": len(prompts),
        "exact_match": sum(hits) / len(hits),
        "exact_match_nonblank": sum(nonblank) / max(1, len(nonblank)),
        "tpf": sum(len(r.tokens) for r in results) / sum(r.forwards for r in results),
        "tokens_per_s": tokens_per_s,
        "identical_to_ar": (sum(r.tokens == a for r, a in zip(results, ar_tokens)) / len(results)
                            if ar_tokens is not None else None),
        "prefix_match": statistics.fmean(prefix_match(r.tokens, p.continuation) for r, p in zip(results, prompts)),
        "repetition": statistics.fmean(repetition(r.tokens) for r in results),
        "ar_loglik": _mean_finite(logliks),
    }
    if mode.startswith("self-spec") or mode == "prompt-lookup":
        accepted = [k - 1 for r in results for k in r.emit_sizes[1:]]
        hist = [0] * (max(accepted, default=0) + 1)
        for k in accepted:
            hist[k] += 1
        record["accepted_histogram"] = hist
        record["mean_accepted"] = sum(accepted) / max(1, len(accepted))
        reached = [sum(hist[j:]) for j in range(len(hist))]  # cycles with at least j drafts accepted
        record["slot_acceptance"] = [round(reached[j] / reached[j - 1], 4) for j in range(1, len(hist))]
    if prompts[0].next_line is None:  # prompts from a file: nothing to match against
        record.update(exact_match=None, exact_match_nonblank=None, prefix_match=None)
    return record


def _mean_finite(xs: list[float] | None) -> float | None:
    if xs is None:
        return None
    kept = [x for x in xs if x == x]
    return statistics.fmean(kept) if kept else None


def truth_record(prompts: list[EvalPrompt], logliks: list[float] | None) -> dict[str, Any]:
    """The true continuation's repetition and AR log-likelihood (what the modes' figures compare with)."""
    return {"mode": "true-continuation", "threshold": None, "n_prompts": len(prompts), "exact_match": 1.0,
            "exact_match_nonblank": 1.0, "tpf": None, "tokens_per_s": None, "identical_to_ar": None,
            "prefix_match": statistics.fmean(len(p.continuation) for p in prompts),
            "repetition": statistics.fmean(repetition(p.continuation) for p in prompts),
            "ar_loglik": _mean_finite(logliks)}


def baseline_record(prompts: list[EvalPrompt]) -> dict[str, Any]:
    """The trivial baseline: the next line equals the previous one."""
    hits = [p.previous_line == p.next_line for p in prompts]
    nonblank = [h for h, p in zip(hits, prompts) if p.next_line.strip()]
    return {"mode": "copy-previous-line", "threshold": None, "n_prompts": len(prompts),
            "exact_match": sum(hits) / len(hits), "exact_match_nonblank": sum(nonblank) / max(1, len(nonblank)),
            "tpf": None, "tokens_per_s": None, "identical_to_ar": None}


def near_tie_report(model: Any, prompts: list[EvalPrompt], ar: list[Any], other: list[Any]) -> list[dict]:
    """For each output differing from AR: where it diverges and AR's top-2 logit gap there."""
    net = model.backbone.model
    mask_id = model.config.mask_token_id
    rows = []
    for p, a, o in zip(prompts, ar, other):
        if a.tokens == o.tokens:
            continue
        i = next((j for j, (x, y) in enumerate(zip(a.tokens, o.tokens)) if x != y), min(len(a.tokens), len(o.tokens)))
        seq = p.ids + a.tokens[:i]
        L = len(seq)
        with torch.no_grad():
            mask = torch.ones(L, L, dtype=torch.bool).tril()[None]
            logits = net.forward_dense(torch.tensor([seq]), torch.arange(L)[None], mask)[0, -1].double()
        logits[mask_id] = float("-inf")
        top = torch.topk(logits, 2).values
        rows.append({"source": p.source, "position": i, "top2_gap": float(top[0] - top[1])})
    return rows


def markdown_table(records: list[dict[str, Any]]) -> str:
    """The records as a Markdown table."""
    def pct(x: Any) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    def num(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    lines = ["| mode | threshold | exact match | exact match (non-blank) | prefix match (tokens) | AR log-lik. "
             "| repetition | TPF | tokens/s | identical to AR | mean accepted |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['mode']} | {num(r['threshold'], '')} | {pct(r['exact_match'])} "
                     f"| {pct(r['exact_match_nonblank'])} | {num(r.get('prefix_match'), '.2f')} "
                     f"| {num(r.get('ar_loglik'), '.3f')} | {pct(r.get('repetition'))} "
                     f"| {num(r['tpf'], '.2f')} | {num(r['tokens_per_s'], '.1f')} "
                     f"| {pct(r['identical_to_ar'])} | {num(r.get('mean_accepted'), '.2f')} |")
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], path: str) -> None:
    """The speed/quality front: next-line exact match and identity with AR against TPF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    points = [r for r in records if r["tpf"] is not None]
    for ax, key, title in ((axes[0], "exact_match_nonblank", "next-line exact match, non-blank (%)"),
                           (axes[1], "identical_to_ar", "output identical to AR (%)")):
        for i, r in enumerate(points):
            label = r["mode"] + (f" t={r['threshold']}" if r["threshold"] is not None else "")
            y = 100 * (r[key] or 0.0)
            ax.scatter(r["tpf"], y, s=40)
            ax.annotate(label, (r["tpf"], y), fontsize=7, xytext=(4, 4 + 9 * (i % 4)), textcoords="offset points")
        if key == "exact_match_nonblank":
            for r in records:
                if r["tpf"] is None:
                    ax.axhline(100 * r[key], color="grey", ls=":", label=r["mode"])
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xlabel("tokens per forward (TPF)")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    n = points[0]["n_prompts"] if points else 0
    fig.suptitle(f"Speed/quality front on held-out stdlib code ({n} prompts)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``eval``."""
    p = sub.add_parser("eval", help="evaluate every mode on held-out code", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    p.add_argument("--prompts", type=int, default=200)
    p.add_argument("--prompt-file", default=None, metavar="FILE.jsonl",
                   help="evaluate on these prompts (messages or prompt per line) instead of held-out code")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-prompt-tokens", type=int, default=None,
                   help="keep the last N prompt tokens (default: positions - new tokens - 2 blocks)")
    p.add_argument("--modes", default="ar,diffusion,self-spec,self-spec-quadratic,prompt-lookup,self-spec-lookup")
    p.add_argument("--thresholds", default=",".join(map(str, DIFFUSION_THRESHOLDS)))
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=16, help="requests per session round")
    p.add_argument("--speed-prompts", type=int, default=12,
                   help="prompts timed one request at a time (0: no timing)")
    p.add_argument("--near-ties", action="store_true", help="report AR's top-2 gap where self-spec differs")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    p.add_argument("--plot", default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``graphrt eval``."""
    import graphrt
    from tqdm import tqdm

    if args.prompts <= 0 or args.max_new_tokens <= 0:
        raise ValueError(f"eval: --prompts and --max-new-tokens must be > 0, found {args.prompts}, "
                         f"{args.max_new_tokens}")
    if args.speed_prompts < 0:
        raise ValueError(f"eval: --speed-prompts must be >= 0, found {args.speed_prompts}")
    model = graphrt.load(args.model, dtype=args.dtype, max_batch=args.batch)
    if model.tokenizer is None:
        raise ValueError(f"eval: the model at {model.path} has no tokenizer.json")
    blen = model.config.block_size
    max_prompt = args.max_prompt_tokens or model.config.max_positions - args.max_new_tokens - 2 * blen - 1
    if args.prompt_file:
        prompts = read_prompt_file(model, args.prompt_file, args.max_new_tokens)[:args.prompts]
    else:
        prompts = make_prompts(model.tokenizer, args.prompts, max_prompt, args.max_new_tokens)
    configs: list[tuple[str, float | None]] = []
    for mode in args.modes.split(","):
        if mode == "diffusion":
            configs += [("diffusion", float(t)) for t in args.thresholds.split(",")]
        else:
            configs.append((mode, None))
    if configs[0][0] != "ar":
        configs.insert(0, ("ar", None))
    records: list[dict[str, Any]] = [] if args.prompt_file else [
        baseline_record(prompts), truth_record(prompts, ar_loglik(model, prompts, [p.continuation for p in prompts],
                                                                  16))]
    outputs: dict[tuple[str, float | None], list[Any]] = {}
    with tqdm(total=len(configs) * len(prompts), desc="eval", unit="prompt", file=sys.stderr) as bar:
        for mode, thr in configs:
            bar.set_postfix_str(mode + (f" t={thr}" if thr is not None else ""))
            outputs[(mode, thr)] = run_config(model, mode, thr, prompts, args.max_new_tokens, args.batch, bar)
    ar_tokens = [r.tokens for r in outputs[("ar", None)]]
    for mode, thr in tqdm(configs, desc="speed", file=sys.stderr):
        rate = time_config(model, mode, thr, prompts[:args.speed_prompts], args.max_new_tokens)
        logliks = ar_loglik(model, prompts, [r.tokens for r in outputs[(mode, thr)]], 16)
        records.append(summarize(mode, thr, outputs[(mode, thr)], prompts, ar_tokens, rate, logliks))
    if args.near_ties:
        for mode, thr in configs:
            if mode.startswith("self-spec"):
                rec = next(r for r in records if r["mode"] == mode)
                rec["mismatches"] = near_tie_report(model, prompts, outputs[("ar", None)], outputs[(mode, thr)])
    table = markdown_table(records)
    print(table)
    meta = {"model": model.path, "dtype": args.dtype, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
            "max_prompt_tokens": max_prompt}
    if args.json:
        Path(args.json).write_text(json.dumps([dict(r, **{"setup": meta}) for r in records], indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(f"{table}\n\nSetup: {json.dumps(meta)}\n")
    if args.plot:
        plot(records, args.plot)
    return 0
