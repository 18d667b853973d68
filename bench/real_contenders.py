"""The contenders of the real-model benchmark, each run in a worker process of its own.

A contender is described by a plain dict (its *spec*) so that it can be sent to a
spawned worker; the worker builds it, loads its weights once, and then answers
requests from the benchmark over a pipe. Each contender therefore has a process of
its own: its peak RSS is the worker's ``ru_maxrss``, and loading one contender never
counts against another. Only one worker runs at a time (the others wait on their
pipe), so contenders never compete for the cores.

Specs, by ``kind``:

* ``graphrt`` -- ``graphrt.load(model, compile=...)`` and one :class:`graphrt.Session`
  per prompt group, in any of the requested modes (``ar``, ``prompt-lookup``, ...);
  EOS ignored (``ignore_eos``).
* ``transformers`` -- ``AutoModelForCausalLM`` on the same weights, float32, greedy
  ``generate``; as users run it (dynamic cache), or in the fastest documented
  configuration (``fast``: a static cache sized once for every call, and generate's own
  ``torch.compile`` of the decoding step, enabled on the CPU through ``CompileConfig``).
  EOS disabled in the generation config, so generation never stops early.
* ``llama.cpp`` -- ``llama_cpp.Llama`` on a GGUF file, greedy (``temp=0``), the prompt
  given as token ids; ``Llama.generate`` does not stop at EOS. Batch > 1 runs the
  prompts one after another (llama-cpp-python decodes one sequence at a time).

Requests: ``{"op": "run", "mode", "prompts", "max_new"}`` gives tokens, forwards (where
known), seconds and memory; ``{"op": "forward_cost", "prefix", "widths", "repeats"}``
gives milliseconds per forward by width after a cached prefix; ``{"op": "stop"}``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from memory import PeakRSS, max_rss_mb, rss_mb  # noqa: E402


# ----------------------------------------------------------------------------- graphrt
def float32_weight_bytes(config: Any) -> int:
    """Bytes of a Llama-shaped model's weights in float32, from its config (each tied matrix once).

    What one forward reads: every projection, the norms and the output head (the
    embedding gather reads a few rows only; tied, it is the head). Counted from the
    shapes, so prepacked or compiled weights are counted as the plain ones.
    """
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    q = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * inter + 2 * h  # q, k, v, o, gate/up/down, two norms
    head = config.vocab_size * h * (1 if config.tie_word_embeddings else 2)  # embedding (+ head when untied)
    return 4 * (layers * per_layer + head + h)


class GraphrtRunner:
    """graphrt through its public API: ``graphrt.load`` once, a compiled policy per mode.

    Parameters
    ----------
    model:
        What ``graphrt.load`` takes (a name such as ``smollm2``, a path, or ``None``
        for the shipped model).
    compile:
        ``compile=`` of ``graphrt.load`` (``False``, ``True`` or ``"freeze"``).
    max_batch:
        Cache rows.
    max_seq_len:
        Cache slots per row (``None``: the loader's default).
    linear:
        ``linear=`` of ``graphrt.load`` where the loader has it; ``None`` leaves the
        loader's default.
    """

    def __init__(self, model: str | None, compile: bool | str, max_batch: int, linear: str | None = None,
                 max_seq_len: int | None = None) -> None:
        import inspect

        import graphrt

        kwargs: dict[str, Any] = {"dtype": "float32", "max_batch": max_batch, "compile": compile,
                                  "max_seq_len": max_seq_len}
        if linear is not None:
            if "linear" not in inspect.signature(graphrt.load).parameters:
                raise ValueError(f"graphrt contender: expected graphrt.load to take linear= (asked for "
                                 f"linear={linear!r}), found a loader without it")
            kwargs["linear"] = linear
        self.graphrt = graphrt
        self.model = graphrt.load(model, **kwargs)
        self.policies: dict[str, Any] = {}

    def _policy(self, mode: str) -> Any:
        if mode not in self.policies:
            self.policies[mode] = self.graphrt.compile(mode, self.model)
        return self.policies[mode]

    def run(self, mode: str, prompts: list[list[int]], max_new: int) -> dict[str, Any]:
        """Decode every prompt in one session; tokens, forwards (counted as docs/design.md says) and seconds."""
        g = self.graphrt
        policy = self._policy(mode)
        params = g.GenerationParams(max_new_tokens=max_new, ignore_eos=True)
        t0 = time.perf_counter()
        session = g.Session(self.model.backbone)
        ids = [session.add(policy, p, params) for p in prompts]
        results = session.run()
        seconds = time.perf_counter() - t0
        return {"tokens": [list(results[i].tokens) for i in ids], "forwards": sum(results[i].forwards for i in ids),
                "seconds": seconds}

    def describe(self) -> dict[str, Any]:
        """What the benchmark needs to know of the loaded model."""
        net = getattr(self.model.backbone, "model", self.model.backbone)
        return {"has_mask_token": bool(getattr(self.model, "has_mask_token", True)), "path": str(self.model.path),
                "adapter": str(self.model.adapter) if getattr(self.model, "adapter", None) else None,
                "weight_bytes": float32_weight_bytes(net.config), "max_positions": int(self.model.config.max_positions)}

    def encode(self, records: list[dict[str, Any]], max_tokens: int | None) -> list[list[int]]:
        """Token ids of prompt records: ``messages`` through the chat template, ``text`` as is.

        A tokenizer without a chat template encodes the messages' contents as plain
        text; ``max_tokens`` keeps the first that many ids (small test models).

        Raises
        ------
        ValueError
            The model has no tokenizer.
        """
        tok = self.model.tokenizer
        if tok is None:
            raise ValueError(f"graphrt contender: expected a tokenizer with the model {self.model.path}, found none")
        out = []
        for r in records:
            if "messages" in r and getattr(tok, "chat_template", None):
                ids = tok.encode_chat(r["messages"])
            else:
                ids = tok.encode(r["text"] if "text" in r else "\n\n".join(m["content"] for m in r["messages"]))
            out.append([int(i) for i in ids][:max_tokens])
        return out

    def forward_cost(self, prefix: int, widths: list[int], repeats: int) -> dict[str, float]:
        """Milliseconds of a forward of each width over a ``prefix``-token cached prefix (median)."""
        sys.path.insert(0, str(BENCH_DIR))
        from forward_cost import time_widths

        return time_widths(self.model, prefix, tuple(widths), repeats=repeats)


# ----------------------------------------------------------------------------- transformers
def transformers_model(source: dict[str, Any]) -> Any:
    """The contender's ``transformers`` model in float32 (EOS disabled), from ``source``.

    ``source`` is ``{"hf_dir": path}`` (a transformers checkpoint directory),
    ``{"gguf_dir": dir, "gguf_file": name}`` (transformers' own GGUF reading, which
    dequantizes the file as graphrt does), or ``{"graphrt_dir": path}`` (graphrt's
    checkpoint format, through the hot-path benchmark's ``hf_mistral``).

    Raises
    ------
    ValueError
        ``source`` has none of those keys.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.disable_progress_bar()
    if "hf_dir" in source:
        model = AutoModelForCausalLM.from_pretrained(source["hf_dir"], dtype=torch.float32)
    elif "gguf_file" in source:  # transformers dequantizes; the model is then rebuilt as a plain one
        read = AutoModelForCausalLM.from_pretrained(source["gguf_dir"], gguf_file=source["gguf_file"],
                                                    dtype=torch.float32)
        config = read.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # a plain float32 model: compilable, no GGUF quantizer attached
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(read.state_dict())
        model.generation_config = read.generation_config
        del read
    elif "graphrt_dir" in source:
        sys.path.insert(0, str(BENCH_DIR))
        from contenders import hf_mistral

        return hf_mistral(source["graphrt_dir"], torch.float32)
    else:
        raise ValueError(f"transformers contender: expected a source with hf_dir, gguf_file or graphrt_dir, "
                         f"found keys {sorted(source)}")
    if next(model.parameters()).dtype != torch.float32:
        model = model.float()
    model.eval()
    model.generation_config.eos_token_id = None
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = model.config.pad_token_id or 0
    return model


class TransformersRunner:
    """``model.generate`` greedy over the prompts as one left-padded batch.

    Parameters
    ----------
    source:
        See :func:`transformers_model`.
    fast:
        The fastest documented configuration: ``cache_implementation="static"`` with a
        ``max_cache_len`` fixed for every call (no re-allocation, no re-compilation) and
        generate's automatic ``torch.compile`` of the decoding step (``CompileConfig``,
        allowed on the CPU).
    max_cache_len:
        The static cache's length (the longest prompt plus the new tokens).
    """

    def __init__(self, source: dict[str, Any], fast: bool, max_cache_len: int) -> None:
        self.model, self.fast, self.max_cache_len = transformers_model(source), fast, max_cache_len
        self.compile_config = None
        if fast:
            from transformers import CompileConfig

            self.compile_config = CompileConfig(fullgraph=True)
            self.compile_config._compile_all_devices = True  # generate compiles only on accelerators otherwise

    def run(self, mode: str, prompts: list[list[int]], max_new: int) -> dict[str, Any]:
        """Greedy ``generate`` of ``max_new`` tokens per prompt; ``mode`` must be ``ar``."""
        import torch

        if mode != "ar":
            raise ValueError(f"transformers contender: expected mode 'ar', found {mode!r}")
        pad = self.model.generation_config.pad_token_id
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], dtype=torch.int64)  # [B, P] left-padded
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.int64)  # [B, P]
        kwargs: dict[str, Any] = {}
        if self.fast:
            kwargs = {"cache_implementation": "static", "max_cache_len": self.max_cache_len,
                      "compile_config": self.compile_config}
        calls = [0]
        inner = self.model.forward

        def counted(*a: Any, **k: Any) -> Any:
            calls[0] += 1
            return inner(*a, **k)

        self.model.forward = counted
        try:
            t0 = time.perf_counter()
            with torch.no_grad():
                out = self.model.generate(ids, attention_mask=mask, max_new_tokens=max_new, min_new_tokens=max_new,
                                          do_sample=False, **kwargs)
            seconds = time.perf_counter() - t0
        finally:
            del self.model.forward
        return {"tokens": out[:, width:].tolist(), "forwards": calls[0] * len(prompts) or None, "seconds": seconds}

    def forward_cost(self, prefix: int, widths: list[int], repeats: int) -> dict[str, float]:
        """Milliseconds of a forward of each width over a ``prefix``-token dynamic cache (median)."""
        import torch
        from transformers import DynamicCache

        g = torch.Generator().manual_seed(0)
        vocab = self.model.config.vocab_size
        ids = torch.randint(4, vocab, (1, prefix + max(widths)), generator=g)  # [1, prefix + max width]
        times: dict[int, list[float]] = {w: [] for w in widths}
        with torch.no_grad():
            cache = DynamicCache(config=self.model.config)
            self.model(input_ids=ids[:, :prefix], cache=cache, use_cache=True)
            for rep in range(repeats + 2):  # two warm-up rounds
                for w in widths:
                    t0 = time.perf_counter()
                    self.model(input_ids=ids[:, prefix:prefix + w], position_ids=torch.arange(prefix, prefix + w)[None],
                               cache=cache, use_cache=True)
                    dt = (time.perf_counter() - t0) * 1e3
                    cache.crop(-w)  # drop the probe's K/V: the prefix stays
                    if rep >= 2:
                        times[w].append(dt)
        return {str(w): statistics.median(v) for w, v in times.items()}


# ----------------------------------------------------------------------------- llama.cpp
class LlamaCppRunner:
    """llama.cpp through ``llama-cpp-python`` on a GGUF file, greedy, prompts as token ids.

    Parameters
    ----------
    gguf:
        The GGUF file.
    threads:
        ``n_threads`` and ``n_threads_batch``.
    n_ctx:
        Context length (the longest prompt plus the new tokens, or more).
    """

    def __init__(self, gguf: str, threads: int, n_ctx: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=gguf, n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                         n_batch=max(512, n_ctx), verbose=False)

    def _generate(self, prompt: list[int], max_new: int) -> list[int]:
        self.llm.reset()  # no prefix reuse from an earlier call: every call pays its prefill
        out: list[int] = []
        for tok in self.llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            out.append(int(tok))
            if len(out) == max_new:
                break
        return out

    def run(self, mode: str, prompts: list[list[int]], max_new: int) -> dict[str, Any]:
        """Greedy-decode each prompt in turn; ``mode`` must be ``ar``."""
        if mode != "ar":
            raise ValueError(f"llama.cpp contender: expected mode 'ar', found {mode!r}")
        t0 = time.perf_counter()
        tokens = [self._generate(p, max_new) for p in prompts]
        seconds = time.perf_counter() - t0
        return {"tokens": tokens, "forwards": len(prompts) * max_new, "seconds": seconds}

    def forward_cost(self, prefix: int, widths: list[int], repeats: int) -> dict[str, float]:
        """Milliseconds of ``eval`` of each width after a ``prefix``-token cache (logits of the last token only)."""
        import random

        rng = random.Random(0)
        vocab = self.llm.n_vocab()
        ids = [rng.randrange(4, vocab) for _ in range(prefix + max(widths))]
        self.llm.reset()
        self.llm.eval(ids[:prefix])
        times: dict[int, list[float]] = {w: [] for w in widths}
        for rep in range(repeats + 2):
            for w in widths:
                self.llm.n_tokens = prefix
                self.llm._ctx.kv_cache_seq_rm(-1, prefix, -1)
                t0 = time.perf_counter()
                self.llm.eval(ids[prefix:prefix + w])
                if rep >= 2:
                    times[w].append((time.perf_counter() - t0) * 1e3)
        return {str(w): statistics.median(v) for w, v in times.items()}


# ----------------------------------------------------------------------------- the worker
def build_runner(spec: dict[str, Any]) -> Any:
    """The runner a spec describes (see the module docstring).

    Raises
    ------
    ValueError
        An unknown ``kind``.
    """
    kind = spec["kind"]
    if kind == "graphrt":
        return GraphrtRunner(spec["model"], spec["compile"], spec["max_batch"], spec.get("linear"),
                             spec.get("max_seq_len"))
    if kind == "transformers":
        return TransformersRunner(spec["source"], spec["fast"], spec["max_cache_len"])
    if kind == "llama.cpp":
        return LlamaCppRunner(spec["gguf"], spec["threads"], spec["n_ctx"])
    raise ValueError(f"contender spec: expected kind graphrt, transformers or llama.cpp, found {kind!r}")


def serve(spec: dict[str, Any], conn: Any) -> None:
    """A worker's main loop: build the contender, then answer requests until ``stop``.

    Every answer is ``{"ok": True, ...}`` or ``{"ok": False, "error": text}``; a run's
    answer adds the worker's ``max_rss_mb`` and the RSS peak sampled during the run.
    """
    threads = spec.get("threads")
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
        t0 = time.perf_counter()
        runner = build_runner(spec)
        conn.send(ready(runner, time.perf_counter() - t0))
    except Exception as e:  # noqa: BLE001 -- reported to the benchmark, which says what failed
        conn.send({"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()})
        return
    while True:
        msg = conn.recv()
        if msg["op"] == "stop":
            conn.send({"ok": True})
            return
        conn.send(handle(runner, msg))


def ready(runner: Any, load_seconds: float) -> dict[str, Any]:
    """The first answer of a worker: load time, memory after loading, and the runner's description."""
    info = runner.describe() if hasattr(runner, "describe") else {}
    return {"ok": True, "load_seconds": load_seconds, "max_rss_mb": max_rss_mb(), "rss_mb": rss_mb(), **info}


def handle(runner: Any, msg: dict[str, Any]) -> dict[str, Any]:
    """One request (``run``, ``forward_cost``, ``encode``) answered by ``runner``; errors become ``{"ok": False}``."""
    try:
        if msg["op"] == "encode":
            return {"ok": True, "ids": runner.encode(msg["records"], msg.get("max_tokens"))}
        if msg["op"] == "run":
            with PeakRSS() as peak:
                out = runner.run(msg["mode"], msg["prompts"], msg["max_new"])
            return {**out, "ok": True, "run_peak_rss_mb": peak.peak, "max_rss_mb": max_rss_mb()}
        if msg["op"] == "forward_cost":
            return {"ok": True, "ms": runner.forward_cost(msg["prefix"], msg["widths"], msg["repeats"])}
        return {"ok": False, "error": f"expected op run, forward_cost, encode or stop, found {msg['op']!r}"}
    except Exception as e:  # noqa: BLE001 -- reported to the benchmark, which says what failed
        return {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}


class Worker:
    """The benchmark's handle on one contender's worker process.

    Parameters
    ----------
    spec:
        The contender (see the module docstring); ``spec["threads"]`` also sets the
        worker's ``OMP_NUM_THREADS``.
    in_process:
        Build the contender in this process instead (tests: no process start-up; the
        memory figures are then this process's).
    """

    def __init__(self, spec: dict[str, Any], in_process: bool = False) -> None:
        self.spec = spec
        if in_process:
            self._local = _LocalConn(spec)
            self.conn, self.proc = self._local, None
        else:
            ctx = mp.get_context("spawn")
            self.conn, child = ctx.Pipe()
            env_threads = str(spec.get("threads") or "")
            saved = os.environ.get("OMP_NUM_THREADS")
            if env_threads:
                os.environ["OMP_NUM_THREADS"] = env_threads
            try:
                self.proc = ctx.Process(target=serve, args=(spec, child), daemon=True)
                self.proc.start()
            finally:
                if saved is None:
                    os.environ.pop("OMP_NUM_THREADS", None)
                else:
                    os.environ["OMP_NUM_THREADS"] = saved
            child.close()
        self.ready = self._answer("load")

    def _answer(self, what: str) -> dict[str, Any]:
        try:
            out = self.conn.recv()
        except EOFError:
            out = {"ok": False, "error": f"the worker process ended (exit code {self.proc.exitcode if self.proc else '-'})"}
        if not out.get("ok"):
            raise RuntimeError(f"contender {self.spec.get('name', self.spec['kind'])}: {what} failed: {out['error']}\n"
                               f"{out.get('trace', '')}")
        return out

    def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Send one request and wait for its answer.

        Raises
        ------
        RuntimeError
            The worker reported an error (the message carries its traceback) or died.
        """
        self.conn.send(msg)
        return self._answer(msg["op"])

    def close(self) -> None:
        """Stop the worker (and wait for its process)."""
        try:
            self.conn.send({"op": "stop"})
            self.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            pass
        if self.proc is not None:
            self.proc.join(timeout=30)
            if self.proc.is_alive():
                self.proc.kill()


class _LocalConn:
    """A pipe stand-in that answers :func:`serve`'s requests in this process."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self._out: list[dict[str, Any]] = []
        self._runner: Any = None
        try:
            t0 = time.perf_counter()
            self._runner = build_runner(spec)
            self._out.append(ready(self._runner, time.perf_counter() - t0))
        except Exception as e:  # noqa: BLE001
            self._out.append({"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()})

    def send(self, msg: dict[str, Any]) -> None:
        self._out.append({"ok": True} if msg["op"] == "stop" else handle(self._runner, msg))

    def recv(self) -> dict[str, Any]:
        return self._out.pop(0)


__all__ = ["float32_weight_bytes", "GraphrtRunner", "TransformersRunner", "LlamaCppRunner", "Worker", "build_runner", "serve",
           "handle", "transformers_model", "rss_mb", "max_rss_mb"]
