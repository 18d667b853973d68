"""Side-by-side decoding on a real pretrained model (``graphrt bench --model smollm2``).

Contenders, on the same weights in float32, the same prompts and the same threads,
greedy, EOS ignored, 64 new tokens, tokens/s with the prefill included:

* graphrt, eager and compiled (``compile=True``; ``--no-compiled`` skips every
  compiled contender, since compiling a 30-layer model takes minutes), in ``ar``,
  ``prompt-lookup`` and ``self-spec-lookup``, and, when the model has a mask token
  (a drafter), ``self-spec``, ``self-spec-quadratic`` and ``diffusion``;
* transformers ``generate`` (``AutoModelForCausalLM`` from the same weights) as users
  run it, and in its fastest documented configuration (static cache + compiled
  decoding step; compile time reported apart);
* llama.cpp through ``llama-cpp-python`` on the same weights written as an F32 GGUF,
  and on the model's own GGUF file (Q4_1 for SmolLM2) as a labelled reference for
  quantized weights. Skipped, with a message, when ``llama_cpp`` is not installed.

Prompts are the three committed sets in ``bench/prompts`` (chat questions, code-edit
requests, raw code continuation; code from held-out standard-library files only).
Every contender runs in a worker process of its own (:mod:`real_contenders`), which
gives its peak RSS; one runs at a time. Contenders are interleaved per prompt group
(the order rotates), the first run of each (every group, for compiled ones) is a
warm-up kept out of the figures, every group is repeated, and the figures are medians
with ratios to graphrt's eager ``ar``. Also measured: the forward cost by width (1..64
tokens after a 100-token prefix) for graphrt, transformers and llama.cpp, against the
bandwidth floor measured on this machine (stream-reading a 512 MB float32 tensor with
the benchmark's threads): the weights' bytes at that rate.

The full run (about 75 minutes on 2 cores, compiles included; about 40 with ``--no-compiled``;
run it with the machine otherwise idle, and without ``OMP_WAIT_POLICY=PASSIVE``: sleeping between parallel
regions slows every contender's forward, llama.cpp's 1-token one by 80%)::

    graphrt bench --model smollm2

writes ``bench/results/smollm2_side_by_side.{json,md,png}``. A quick look::

    graphrt bench --model smollm2 --prompts 1 --kinds chat --batches 1 --max-new-tokens 8 --repeats 1 \\
        --no-compiled --forward-widths 1,8 --forward-cost-repeats 1 --json /tmp/s.json --markdown /tmp/s.md \\
        --plot /tmp/s.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from real_contenders import Worker  # noqa: E402

PROMPT_DIR = BENCH_DIR / "prompts"
RESULTS_DIR = BENCH_DIR / "results"
KINDS = ("chat", "code_edit", "continuation")
BASE_MODES = ("ar", "prompt-lookup", "self-spec-lookup")
DRAFTER_MODES = ("self-spec", "self-spec-quadratic", "diffusion")
LOSSLESS_MODES = ("ar", "prompt-lookup", "self-spec-lookup", "self-spec", "self-spec-quadratic")
CONTENDERS = ("graphrt-eager", "graphrt-compiled", "transformers", "transformers-compiled", "llama-cpp-f32",
              "llama-cpp-gguf")
FORWARD_WIDTHS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
BASELINE = ("graphrt eager", "ar")
GRAPHRT_SLACK = 128  # cache slots past prompt + new tokens: drafts and verification blocks write there
DEFAULTS = {"contenders": ",".join(CONTENDERS), "batches": "1,4", "prompts": 8, "threads": 2,
            "forward_cost_repeats": 10, "json": str(RESULTS_DIR / "smollm2_side_by_side.json"),
            "markdown": str(RESULTS_DIR / "smollm2_side_by_side.md"),
            "plot": str(RESULTS_DIR / "smollm2_side_by_side.png")}


# ----------------------------------------------------------------------------- the model's sources
@dataclass
class ModelSource:
    """Where each contender reads the model from.

    Attributes
    ----------
    graphrt:
        What ``graphrt.load`` takes (a name, a path, or ``None`` for the shipped model).
    transformers:
        :func:`real_contenders.transformers_model`'s source.
    gguf:
        The model's GGUF file (llama.cpp's source, and the F32 copy's), or ``None``.
    label:
        The model's name in the report.
    """

    graphrt: str | None
    transformers: dict[str, str]
    gguf: str | None
    label: str


def _named_gguf(name: str) -> Path | None:
    """The GGUF file of a named model (``smollm2``), or ``None`` when graphrt has no such name."""
    try:
        from graphrt.frontends.models.named_models import named_model, named_model_file
    except ImportError:
        return None
    return named_model_file(name) if named_model(name) is not None else None


def _transformers_dir(path: Path) -> bool:
    """Whether ``path`` is a transformers checkpoint directory (not graphrt's own format)."""
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    return json.loads(cfg.read_text()).get("model_type") not in (None, "nemotron_labs_diffusion")


def resolve_model(model: str | None, fallback: str | None = None, gguf: str | None = None) -> ModelSource:
    """Resolve ``--model`` for every contender.

    Parameters
    ----------
    model:
        A model name graphrt knows (``smollm2``), a GGUF file, a checkpoint directory
        (transformers' or graphrt's format), or ``None`` (the shipped model).
    fallback:
        A transformers checkpoint directory of the same weights, used by graphrt when
        ``model`` is a name graphrt cannot load, and by transformers when given.
    gguf:
        A GGUF file for llama.cpp when ``model`` is not one.

    Raises
    ------
    ValueError
        ``model`` is neither a known name nor an existing path (the message says how
        to install a named model's package), or nothing can feed transformers.
    """
    if model is None:
        import graphrt

        path = graphrt.load(None, max_batch=1).path
        return ModelSource(None, {"graphrt_dir": str(path)}, gguf, "the shipped model")
    p = Path(model)
    if not p.exists():
        try:
            named = _named_gguf(model)
        except ValueError:
            if fallback is None:
                raise
            named = None
        if named is None and fallback is None:
            raise ValueError(f"bench: expected --model to be a model name graphrt knows or an existing path, found "
                             f"{model!r}")
        src = {"hf_dir": fallback} if fallback else {"gguf_dir": str(named.parent), "gguf_file": named.name}
        return ModelSource(model if named is not None else fallback, src, gguf or (str(named) if named else None),
                           model)
    if p.is_file() and p.suffix == ".gguf":
        src = {"hf_dir": fallback} if fallback else {"gguf_dir": str(p.parent), "gguf_file": p.name}
        return ModelSource(str(p), src, gguf or str(p), p.name)
    if _transformers_dir(p):
        return ModelSource(str(p), {"hf_dir": fallback or str(p)}, gguf, p.name)
    return ModelSource(str(p), {"hf_dir": fallback} if fallback else {"graphrt_dir": str(p)}, gguf, p.name)


def gguf_type(path: str) -> str:
    """The most common tensor type of a GGUF file (``Q4_1``, ``F32``, ...), by element count."""
    import gguf

    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(path, "r").tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + int(t.n_elements)
    return max(counts, key=counts.get) if counts else "?"


# ----------------------------------------------------------------------------- prompts
def load_prompts(kinds: list[str], per_kind: int, folder: Path = PROMPT_DIR) -> list[dict[str, Any]]:
    """The first ``per_kind`` records of each kind's JSONL file.

    Raises
    ------
    ValueError
        An unknown kind, or a file with fewer records than asked for.
    """
    out = []
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"bench: expected prompt kinds from {KINDS}, found {kind!r}")
        path = folder / f"{kind}.jsonl"
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(records) < per_kind:
            raise ValueError(f"bench: expected at least {per_kind} prompts in {path}, found {len(records)}")
        out += records[:per_kind]
    return out


def prompt_groups(prompts: list[dict[str, Any]], batch: int) -> list[list[int]]:
    """Indices of ``prompts`` in groups of ``batch``, each group of one kind (a kind's remainder is dropped)."""
    groups = []
    for kind in dict.fromkeys(p["kind"] for p in prompts):
        idx = [i for i, p in enumerate(prompts) if p["kind"] == kind]
        groups += [idx[k:k + batch] for k in range(0, len(idx) - batch + 1, batch)]
    return groups


# ----------------------------------------------------------------------------- the bandwidth floor
def stream_read_gbps(mb: int = 512, threads: int = 2, repeats: int = 7) -> float:
    """Bytes per second (in GB/s, 1e9) at which ``threads`` threads stream-read a float32 tensor of ``mb`` MiB.

    The tensor is summed (one read of every byte, negligible arithmetic); the figure
    is the median of ``repeats`` after one warm-up.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t = torch.ones(mb * 2**20 // 4, dtype=torch.float32)
        times = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            t.sum()
            if i:
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return mb * 2**20 / statistics.median(times) / 1e9


# ----------------------------------------------------------------------------- planning
@dataclass
class Contender:
    """One worker and the modes it runs."""

    name: str
    backend: str
    spec: dict[str, Any]
    modes: list[str]
    compiled: bool = False
    worker: Worker | None = None


def plan(args: argparse.Namespace, src: ModelSource, prompt_len: int, max_batch: int, max_positions: int,
         log: Any) -> tuple[list[Contender], list[dict[str, str]]]:
    """The contenders to start (graphrt's eager one first), and those skipped with the reason.

    Caches are sized for the run, as a user sizes them: llama.cpp's context and
    transformers' static cache hold the longest prompt plus the new tokens; graphrt's
    rows hold that plus :data:`GRAPHRT_SLACK` slots for drafts (and the forward-cost
    probe's prefix and widest forward), within the model's positions; ``max_positions``
    0 leaves graphrt's default.
    """
    chosen = args.contenders.split(",")
    unknown = sorted(set(chosen) - set(CONTENDERS))
    if unknown:
        raise ValueError(f"bench: expected contenders from {CONTENDERS}, found unknown {unknown}")
    if args.no_compiled:
        chosen = [c for c in chosen if not c.endswith("-compiled")]
    threads, n_ctx = args.threads, prompt_len + args.max_new_tokens + 8
    widest = max(int(w) for w in args.forward_widths.split(","))
    seq_len = min(max(n_ctx + GRAPHRT_SLACK, 100 + widest + GRAPHRT_SLACK), max_positions) if max_positions else None
    out: list[Contender] = []
    skipped: list[dict[str, str]] = []
    for backend in ("eager", "compiled"):
        if f"graphrt-{backend}" in chosen:
            compiled = False if backend == "eager" else ("freeze" if args.compile_mode == "freeze" else True)
            out.append(Contender(f"graphrt {backend}", backend,
                                 {"kind": "graphrt", "name": f"graphrt {backend}", "model": src.graphrt,
                                  "compile": compiled, "max_batch": max_batch, "max_seq_len": seq_len,
                                  "linear": args.linear,
                                  "threads": threads}, [], compiled=backend == "compiled"))
    for fast in (False, True):
        if ("transformers-compiled" if fast else "transformers") in chosen:
            name = "transformers static+compile" if fast else "transformers generate"
            out.append(Contender(name, "static cache + compile" if fast else "default",
                                 {"kind": "transformers", "name": name, "source": src.transformers, "fast": fast,
                                  "max_cache_len": n_ctx, "threads": threads}, ["ar"], compiled=fast))
    wants_llama = [c for c in ("llama-cpp-f32", "llama-cpp-gguf") if c in chosen]
    if wants_llama:
        why = llama_cpp_missing(src)
        if why:
            log(f"  skipping {', '.join(wants_llama)}: {why}")
            skipped += [{"contender": c, "reason": why} for c in wants_llama]
        else:
            from f32_gguf import cached_f32_gguf

            files = {}
            if "llama-cpp-f32" in chosen:
                t0 = time.perf_counter()
                files["llama.cpp F32"] = str(cached_f32_gguf(src.gguf))
                log(f"  F32 GGUF: {files['llama.cpp F32']} ({time.perf_counter() - t0:.1f} s)")
            if "llama-cpp-gguf" in chosen:
                files[f"llama.cpp {gguf_type(src.gguf)} (quantized reference)"] = src.gguf
            for name, path in files.items():
                out.append(Contender(name, "llama-cpp-python", {"kind": "llama.cpp", "name": name, "gguf": path,
                                                                "threads": threads, "n_ctx": n_ctx}, ["ar"]))
    return out, skipped


def cache_slots(spec: dict[str, Any]) -> int | str:
    """A contender's KV-cache slots per sequence: a number, ``dynamic`` (grows) or ``default`` (the loader's)."""
    if spec["kind"] == "transformers" and not spec["fast"]:
        return "dynamic"
    return next((spec[k] for k in ("max_seq_len", "max_cache_len", "n_ctx") if spec.get(k)), "default")


def llama_cpp_missing(src: ModelSource) -> str | None:
    """Why the llama.cpp contenders cannot run (``None`` when they can)."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return ("llama-cpp-python is not installed (it is no dependency of graphrt; pip install "
                "llama-cpp-python builds it)")
    if src.gguf is None:
        return "the model has no GGUF file (pass --gguf FILE)"
    return None


def graphrt_modes(args: argparse.Namespace, has_mask_token: bool) -> list[str]:
    """The graphrt modes to run: ``--modes``, else the drafterless ones plus the drafted ones when possible."""
    if args.modes:
        return args.modes.split(",")
    return list(BASE_MODES) + (list(DRAFTER_MODES) if has_mask_token else [])


# ----------------------------------------------------------------------------- the run
def run_contenders(args: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    """Start the workers, warm up, run the interleaved repeats and the forward-cost probe.

    Returns the JSON document (without the report's summaries).
    """
    src = resolve_model(args.model, args.fallback, args.gguf)
    kinds = args.kinds.split(",")
    prompts = load_prompts(kinds, args.prompts)
    batches = [int(b) for b in args.batches.split(",")]
    log(f"model {src.label}: graphrt loads {src.graphrt!r}, transformers reads {src.transformers}")
    # a first graphrt worker reads the model's tokenizer and shape; the contenders' caches are sized from them
    probe = plan(argparse.Namespace(**{**vars(args), "contenders": "graphrt-eager"}), src, 0, 1, 0, log)[0][0]
    probe.worker = Worker(probe.spec, in_process=args.in_process)
    try:
        info = probe.worker.ready
        ids = probe.worker.call({"op": "encode", "records": prompts, "max_tokens": args.max_prompt_tokens})["ids"]
    finally:
        probe.worker.close()
    modes = graphrt_modes(args, info["has_mask_token"])
    if not info["has_mask_token"]:
        log(f"  the model has no mask token (no drafter): graphrt runs {', '.join(modes)}")
    contenders, skipped = plan(args, src, max(len(i) for i in ids), max(batches), info["max_positions"], log)
    for c in contenders:
        if c.spec["kind"] == "graphrt":
            c.modes = list(modes)
        t0 = time.perf_counter()
        try:
            c.worker = Worker(c.spec, in_process=args.in_process)
        except RuntimeError as e:
            log(f"  skipping {c.name}: {str(e).splitlines()[0]}")
            skipped.append({"contender": c.name, "reason": str(e).splitlines()[0]})
            continue
        log(f"  loaded {c.name} in {time.perf_counter() - t0:.1f} s")
    contenders = [c for c in contenders if c.worker is not None]
    doc: dict[str, Any] = {"model": {"label": src.label, "graphrt": src.graphrt, "transformers": src.transformers,
                                     "gguf": src.gguf, **{k: info[k] for k in ("path", "adapter", "weight_bytes",
                                                                               "has_mask_token")}},
                           "prompts": [{"id": p["id"], "kind": p["kind"], "source": p.get("source"), "tokens": len(i)}
                                       for p, i in zip(prompts, ids)],
                           "skipped": skipped,
                           "cache_slots": {c.name: cache_slots(c.spec) for c in contenders},
                           "load": {c.name: {"seconds": c.worker.ready["load_seconds"],
                                                                 "rss_mb": c.worker.ready["rss_mb"]}
                                                        for c in contenders}}
    try:
        doc["runs"], doc["warmup"] = interleaved(contenders, ids, prompts, batches, args, log)
        doc["forward_cost"] = forward_costs(contenders, args, log)
    finally:
        for c in contenders:
            c.worker.close()
    gbps = stream_read_gbps(args.bandwidth_mb, threads=args.threads)
    floor_ms = info["weight_bytes"] / (gbps * 1e9) * 1e3
    doc["bandwidth"] = {"stream_read_gb_per_s": gbps, "tensor_mb": args.bandwidth_mb, "threads": args.threads,
                        "weight_mb": info["weight_bytes"] / 2**20, "floor_ms": floor_ms}
    log(f"bandwidth floor: {gbps:.1f} GB/s stream read, {info['weight_bytes'] / 1e6:.0f} MB of weights -> "
        f"{floor_ms:.1f} ms per forward")
    return doc


def interleaved(contenders: list[Contender], ids: list[list[int]], prompts: list[dict[str, Any]],
                batches: list[int], args: argparse.Namespace, log: Any) -> tuple[list[dict], list[dict]]:
    """Warm-up, then ``args.repeats`` rounds of every (contender, mode) on every prompt group, order rotating."""
    runs: list[dict[str, Any]] = []
    warm: list[dict[str, Any]] = []
    pairs = [(c, m) for c in contenders for m in c.modes]
    for batch in batches:
        groups = prompt_groups(prompts, batch)
        if not groups:
            log(f"  batch {batch}: fewer than {batch} prompts of each kind, skipped")
            continue
        for c, mode in pairs:  # compiled contenders meet every shape here, not in a timed run
            seconds = 0.0
            for g in (groups if c.compiled else groups[:1]):
                out = c.worker.call({"op": "run", "mode": mode, "prompts": [ids[i] for i in g],
                                     "max_new": args.max_new_tokens})
                seconds += out["seconds"]
            warm.append({"contender": c.name, "mode": mode, "batch": batch, "seconds": seconds,
                         "groups": len(groups) if c.compiled else 1, "compiled": c.compiled})
            log(f"  warm-up {c.name} {mode} batch {batch}: {seconds:.1f} s")
        for rep in range(args.repeats):
            for g, group in enumerate(groups):
                shift = (g + rep) % len(pairs)
                for c, mode in pairs[shift:] + pairs[:shift]:
                    out = c.worker.call({"op": "run", "mode": mode, "prompts": [ids[i] for i in group],
                                         "max_new": args.max_new_tokens})
                    n = sum(len(t) for t in out["tokens"])
                    runs.append({"contender": c.name, "backend": c.backend, "mode": mode, "batch": batch,
                                 "kind": prompts[group[0]]["kind"], "group": [prompts[i]["id"] for i in group],
                                 "repeat": rep, "seconds": out["seconds"], "tokens": n,
                                 "tokens_per_s": n / out["seconds"], "forwards": out["forwards"],
                                 "token_ids": out["tokens"], "run_peak_rss_mb": out["run_peak_rss_mb"],
                                 "max_rss_mb": out["max_rss_mb"]})
            log(f"  batch {batch}: repeat {rep + 1}/{args.repeats} done")
    return runs, warm


def forward_costs(contenders: list[Contender], args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """Milliseconds per forward by width after a 100-token prefix, per contender that can measure it.

    Compiled contenders are left out (a compile per width) unless ``--compiled-forward-cost``.
    """
    widths = [int(w) for w in args.forward_widths.split(",")]
    out: dict[str, Any] = {"prefix": 100, "widths": widths, "ms": {}}
    if not args.forward_cost_repeats:
        return out
    for c in contenders:
        if c.compiled and not args.compiled_forward_cost:
            continue
        t0 = time.perf_counter()
        out["ms"][c.name] = c.worker.call({"op": "forward_cost", "prefix": 100, "widths": widths,
                                           "repeats": args.forward_cost_repeats})["ms"]
        log(f"  forward cost {c.name}: {time.perf_counter() - t0:.1f} s")
    return out


# ----------------------------------------------------------------------------- summaries
def summarize(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per (contender, mode, batch, kind), kinds plus ``all``: medians, TPF, ratios, memory, agreement.

    ``tokens_per_s`` is the median over prompt groups of each group's median over
    repeats; ``vs_graphrt_ar`` divides it by graphrt eager ``ar``'s at the same batch
    and kind; ``same_tokens_as_ar`` is the fraction of prompts (first repeat) whose
    tokens equal graphrt eager ``ar``'s.
    """
    runs = doc["runs"]
    ar_tokens = {(r["batch"], tuple(r["group"])): r["token_ids"] for r in runs
                 if (r["contender"], r["mode"]) == BASELINE and r["repeat"] == 0}
    keys = list(dict.fromkeys((r["contender"], r["backend"], r["mode"], r["batch"]) for r in runs))
    records: list[dict[str, Any]] = []
    for contender, backend, mode, batch in keys:
        mine = [r for r in runs if (r["contender"], r["mode"], r["batch"]) == (contender, mode, batch)]
        for kind in list(dict.fromkeys(r["kind"] for r in mine)) + ["all"]:
            rs = [r for r in mine if kind in ("all", r["kind"])]
            per_group: dict[tuple[str, ...], list[float]] = {}
            for r in rs:
                per_group.setdefault(tuple(r["group"]), []).append(r["tokens_per_s"])
            tps = statistics.median(statistics.median(v) for v in per_group.values())
            fw = [r["forwards"] for r in rs]
            same = [a == b for r in rs if r["repeat"] == 0 and (batch, tuple(r["group"])) in ar_tokens
                    for a, b in zip(r["token_ids"], ar_tokens[(batch, tuple(r["group"]))])]
            records.append({
                "contender": contender, "backend": backend, "mode": mode, "batch": batch, "kind": kind,
                "tokens_per_s": tps, "groups": len(per_group), "repeats": max(r["repeat"] for r in rs) + 1,
                "tpf": sum(r["tokens"] for r in rs) / sum(fw) if all(fw) else None,
                "ms_per_token": 1e3 / tps * batch,
                "peak_rss_mb": max(r["max_rss_mb"] for r in mine),
                "run_peak_rss_mb": max(r["run_peak_rss_mb"] for r in rs),
                "same_tokens_as_ar": sum(same) / len(same) if same else None})
    base = {(r["batch"], r["kind"]): r["tokens_per_s"] for r in records if (r["contender"], r["mode"]) == BASELINE}
    for r in records:
        b = base.get((r["batch"], r["kind"]))
        r["vs_graphrt_ar"] = r["tokens_per_s"] / b if b else None
    return records


def compile_seconds(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Compile time of the compiled contenders: the warm-up pass minus the same groups' timed medians."""
    out = []
    for w in doc["warmup"]:
        if not w["compiled"]:
            continue
        timed = [r for r in doc["runs"] if (r["contender"], r["mode"], r["batch"]) == (w["contender"], w["mode"],
                                                                                     w["batch"])]
        per_group: dict[tuple[str, ...], list[float]] = {}
        for r in timed:
            per_group.setdefault(tuple(r["group"]), []).append(r["seconds"])
        run = sum(statistics.median(v) for v in per_group.values()) * w["groups"] / max(len(per_group), 1)
        out.append({"contender": w["contender"], "mode": w["mode"], "batch": w["batch"],
                    "warmup_seconds": w["seconds"], "compile_seconds": max(w["seconds"] - run, 0.0)})
    return out


def targets(records: list[dict[str, Any]], doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The real-model issue's targets that this run measured, each with its value and whether it is met."""
    out: list[dict[str, Any]] = []

    def tps(contender: str, mode: str, kind: str = "all", batch: int = 1) -> float | None:
        return next((r["tokens_per_s"] for r in records if (r["contender"], r["mode"], r["batch"], r["kind"]) ==
                     (contender, mode, batch, kind)), None)

    def add(name: str, num: float | None, den: float | None, target: float, higher: bool = True) -> None:
        if num is not None and den:
            v = num / den
            out.append({"target": name, "value": v, "goal": f"{'>=' if higher else '<='} {target:g}",
                        "met": bool(v >= target if higher else v <= target)})

    fc, bw = doc["forward_cost"]["ms"], doc["bandwidth"]
    for name, ms in fc.items():
        if name.startswith("graphrt") and "1" in ms:
            wide = [w for w in ("2", "4", "8", "16") if w in ms]
            if wide:
                add(f"{name}: widest of the 2..16-token forwards / 1-token forward", max(ms[w] for w in wide),
                    ms["1"], 1.15, higher=False)
            add(f"{name}: 1-token forward / bandwidth floor", ms["1"], bw["floor_ms"], 1.6, higher=False)
    for g in [r for r in dict.fromkeys(r["contender"] for r in records) if r.startswith("graphrt")]:
        add(f"{g} ar / transformers generate, batch 1", tps(g, "ar"), tps("transformers generate", "ar"), 2.0)
        f32 = next((c for c in dict.fromkeys(r["contender"] for r in records) if c == "llama.cpp F32"), None)
        if f32:
            add(f"{g} ar / llama.cpp F32, batch 1", tps(g, "ar"), tps(f32, "ar"), 1.0)
        for mode in ("prompt-lookup", "self-spec-lookup"):
            add(f"{g} {mode} / {g} ar, code edit, batch 1", tps(g, mode, "code_edit"), tps(g, "ar", "code_edit"), 2.0)
        rss = next((r["peak_rss_mb"] for r in records if r["contender"] == g), None)
        add(f"{g} peak RSS / float32 weights", rss, bw["weight_mb"], 1.5, higher=False)
    return out


# ----------------------------------------------------------------------------- report
KIND_TITLES = {"chat": "chat", "code_edit": "code edit", "continuation": "continuation", "all": "all"}


def markdown(doc: dict[str, Any]) -> str:
    """The report: tokens/s by kind at each batch with ratios, TPF, memory, forward cost, targets."""
    records, mach = doc["records"], doc["machine"]
    kinds = [k for k in (*KINDS, "all") if any(r["kind"] == k for r in records)]
    lines = [f"Command: `{doc['command']}`", "",
             f"Machine: {mach['cpu']}, {mach['cores']} cores, {doc['config']['threads']} threads per contender; "
             f"torch {mach['torch']}, transformers {mach['transformers']}, llama-cpp-python {mach['llama_cpp']}. "
             f"Model: {doc['model']['label']} ({doc['model']['weight_bytes'] / 2**20:.0f} MiB of float32 weights). "
             f"{doc['config']['max_new_tokens']} new tokens, EOS ignored, greedy; tokens/s include the prefill; "
             f"median over prompt groups of the median over {doc['config']['repeats']} repeat(s); ratios to graphrt "
             f"eager ar.", ""]
    for batch in sorted({r["batch"] for r in records}):
        lines += [f"Batch {batch} (tokens/s, x graphrt ar; TPF):", "",
                  "| contender | mode | " + " | ".join(KIND_TITLES[k] for k in kinds) + " | same tokens as ar | "
                  "peak RSS MiB |", "|---|---|" + "---:|" * len(kinds) + "---:|---:|"]
        for contender, mode in dict.fromkeys((r["contender"], r["mode"]) for r in records if r["batch"] == batch):
            cells = []
            for k in kinds:
                r = next((x for x in records if (x["contender"], x["mode"], x["batch"], x["kind"]) ==
                          (contender, mode, batch, k)), None)
                if r is None:
                    cells.append("-")
                    continue
                ratio = f" ({r['vs_graphrt_ar']:.2f}x)" if r["vs_graphrt_ar"] is not None else ""
                tpf = f"; {r['tpf']:.2f}" if r["tpf"] is not None and r["mode"] != "ar" else ""
                cells.append(f"{r['tokens_per_s']:.1f}{ratio}{tpf}")
            r_all = next(x for x in records if (x["contender"], x["mode"], x["batch"]) == (contender, mode, batch))
            same = "-" if r_all["same_tokens_as_ar"] is None else f"{r_all['same_tokens_as_ar']:.2f}"
            lines.append(f"| {contender} | {mode} | " + " | ".join(cells) + f" | {same} | "
                         f"{r_all['peak_rss_mb']:.0f} |")
        lines.append("")
    fc, bw = doc["forward_cost"], doc["bandwidth"]
    if fc["ms"]:
        ws = [str(w) for w in fc["widths"]]
        lines += [f"Forward cost by width after a {fc['prefix']}-token prefix (ms, median); bandwidth floor "
                  f"{bw['floor_ms']:.1f} ms ({bw['weight_mb']:.0f} MiB of weights at {bw['stream_read_gb_per_s']:.1f}"
                  f" GB/s, a {bw['tensor_mb']} MiB float32 tensor stream-read with {bw['threads']} threads). "
                  f"llama.cpp computes the last token's logits only.", "",
                  "| contender | " + " | ".join(ws) + " |", "|---|" + "---:|" * len(ws)]
        for name, ms in fc["ms"].items():
            lines.append(f"| {name} | " + " | ".join(f"{ms[w]:.1f}" for w in ws) + " |")
        lines.append("")
    if doc["compile"]:
        lines += ["Warm-up and compile time (s; compile = warm-up pass minus the timed medians of the same "
                  "groups):", ""] + [f"- {c['contender']} {c['mode']} batch {c['batch']}: warm-up "
                                     f"{c['warmup_seconds']:.1f}, compile {c['compile_seconds']:.1f}"
                                     for c in doc["compile"]] + [""]
    lines += ["KV-cache slots per sequence (sized for the run): " + "; ".join(
        f"{k} {v}" for k, v in doc["cache_slots"].items()), ""]
    lines += ["Load time and RSS after loading: " + "; ".join(
        f"{k} {v['seconds']:.1f} s, {v['rss_mb']:.0f} MiB" for k, v in doc["load"].items()), ""]
    if doc["targets"]:
        lines += ["Targets:", ""] + [f"- {t['target']}: {t['value']:.2f} (target {t['goal']}): "
                                     f"{'met' if t['met'] else 'missed'}" for t in doc["targets"]] + [""]
    if doc["skipped"]:
        lines += ["Skipped: " + "; ".join(f"{s['contender']} ({s['reason']})" for s in doc["skipped"]), ""]
    lines += ["Prompts: " + ", ".join(f"{p['id']} ({p['source'] or 'written'}, {p['tokens']} tokens)"
                                      for p in doc["prompts"]), ""]
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: str) -> None:
    """Write the chart: batch-1 tokens/s by contender and kind, and forward cost by width with the floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    records = [r for r in doc["records"] if r["batch"] == min(r["batch"] for r in doc["records"])]
    kinds = [k for k in KINDS if any(r["kind"] == k for r in records)]
    labels = list(dict.fromkeys(f"{r['contender']} {r['mode']}" for r in records))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(16, max(5.0, 0.35 * len(labels) + 2)))
    h = 0.8 / max(len(kinds), 1)
    for i, k in enumerate(kinds):
        vals = [next((r["tokens_per_s"] for r in records if r["kind"] == k and
                      f"{r['contender']} {r['mode']}" == lab), 0.0) for lab in labels]
        ax.barh([j + i * h for j in range(len(labels))], vals, height=h, label=KIND_TITLES[k])
    ax.set_yticks([j + h * (len(kinds) - 1) / 2 for j in range(len(labels))])
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("tokens/s, prefill included (median)")
    ax.set_title(f"{doc['model']['label']}, batch {records[0]['batch']}, float32, "
                 f"{doc['config']['threads']} threads")
    ax.legend(fontsize=8)
    fc, bw = doc["forward_cost"], doc["bandwidth"]
    for name, ms in fc["ms"].items():
        ws = [int(w) for w in ms]
        bx.plot(ws, [ms[str(w)] for w in ws], marker="o", label=name)
    bx.axhline(bw["floor_ms"], color="black", linestyle="--",
               label=f"bandwidth floor {bw['floor_ms']:.1f} ms ({bw['stream_read_gb_per_s']:.1f} GB/s)")
    bx.set_xscale("log", base=2)
    bx.set_xticks([int(w) for w in fc["widths"]])
    bx.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    bx.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    bx.set_xlabel(f"tokens in the forward (after a {fc['prefix']}-token prefix)")
    bx.set_ylabel("ms per forward (median)")
    bx.set_ylim(bottom=0)
    bx.set_title("forward cost by width")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import importlib.metadata

    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        llama = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        llama = "not installed"
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "transformers": transformers.__version__,
            "llama_cpp": llama, "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}"}


# ----------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser, shared: bool = True) -> None:
    """This benchmark's options; ``shared=False`` leaves out those the hot-path benchmark already defines
    (``--model --contenders --modes --batches --prompts --max-new-tokens --dtype --threads
    --forward-cost-repeats --compile-mode --json --plot --markdown``), whose defaults here are :data:`DEFAULTS`."""
    if shared:
        p.add_argument("--model", default="smollm2", help="a model name (smollm2), a GGUF file or a checkpoint")
        p.add_argument("--contenders", default=None, help=f"comma list from {', '.join(CONTENDERS)}")
        p.add_argument("--modes", default=None, help="graphrt modes (default: every mode the model supports)")
        p.add_argument("--batches", default=None, help="batch sizes (default 1,4)")
        p.add_argument("--prompts", type=int, default=None, help="prompts per kind (default 8)")
        p.add_argument("--max-new-tokens", type=int, default=64)
        p.add_argument("--dtype", default="float32")
        p.add_argument("--threads", type=int, default=None, help="threads per contender (default 2)")
        p.add_argument("--forward-cost-repeats", type=int, default=None, help="0 skips the probe (default 10)")
        p.add_argument("--compile-mode", default="default", choices=("default", "freeze"))
        p.add_argument("--json", default=None, metavar="FILE")
        p.add_argument("--plot", default=None, metavar="PNG")
        p.add_argument("--markdown", default=None, metavar="FILE")
    g = p.add_argument_group("real pretrained model (--model smollm2, a GGUF file or a transformers checkpoint)")
    g.add_argument("--suite", default="auto", choices=("auto", "hotpath", "real"),
                   help="which benchmark: auto picks 'real' for a named model, a GGUF file or a transformers "
                        "checkpoint, else the hot-path benchmark of the shipped model")
    g.add_argument("--kinds", default=",".join(KINDS), help="prompt kinds (comma list)")
    g.add_argument("--repeats", type=int, default=2, help="timed rounds over every prompt group")
    g.add_argument("--no-compiled", action="store_true", help="skip the compiled contenders (slow to compile)")
    g.add_argument("--fallback", default=None, metavar="DIR",
                   help="a transformers checkpoint of the same weights: used by graphrt when --model is a name it "
                        "cannot load, and by transformers")
    g.add_argument("--gguf", default=None, metavar="FILE", help="the GGUF file for llama.cpp (default: the model's)")
    g.add_argument("--linear", default=None, choices=("auto", "eager", "packed"),
                   help="graphrt.load(linear=...) where the loader has it (default: the loader's default)")
    g.add_argument("--forward-widths", default=",".join(map(str, FORWARD_WIDTHS)))
    g.add_argument("--bandwidth-mb", type=int, default=512,
                   help="size of the float32 tensor stream-read for the bandwidth floor (MiB)")
    g.add_argument("--compiled-forward-cost", action="store_true",
                   help="also probe the compiled contenders' forward cost (one compile per width)")
    g.add_argument("--max-prompt-tokens", type=int, default=None, help="keep the first N prompt tokens (tests)")
    g.add_argument("--in-process", action="store_true",
                   help="run the contenders in this process (tests; peak RSS is then the process's)")


def wants_real(args: argparse.Namespace) -> bool:
    """Whether ``graphrt bench`` should run this benchmark (see ``--suite``)."""
    suite = getattr(args, "suite", "auto")
    if suite != "auto":
        return suite == "real"
    if args.model is None:
        return False
    p = Path(args.model)
    if not p.exists():
        return True  # a name: the real-model loader says whether it knows it
    return (p.is_file() and p.suffix == ".gguf") or _transformers_dir(p)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark as configured by :func:`add_arguments`; returns 0."""
    for k, v in DEFAULTS.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.dtype != "float32":
        raise ValueError(f"bench: the real-model benchmark runs float32 (every contender on the same weights), "
                         f"found --dtype {args.dtype}")
    import torch

    torch.set_num_threads(args.threads)
    command = "graphrt bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:])
    log = lambda s: print(s, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    doc = {"command": command, "machine": machine(),
           "config": {k: v for k, v in vars(args).items() if k not in ("func", "batch_sizes")}}
    doc.update(run_contenders(args, log))
    doc["records"] = summarize(doc)
    doc["compile"] = compile_seconds(doc)
    doc["targets"] = targets(doc["records"], doc)
    doc["seconds"] = time.perf_counter() - t0
    text = markdown(doc)
    print("\n" + text)
    for path in (args.json, args.markdown, args.plot):
        if path not in (None, "-"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    if args.json == "-":
        print(json.dumps(doc, indent=1))
    elif args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    if args.markdown:
        Path(args.markdown).write_text(text, encoding="utf-8")
    if args.plot:
        plot(doc, args.plot)
    log(f"done in {doc['seconds'] / 60:.1f} min")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python bench/real_side_by_side.py``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
