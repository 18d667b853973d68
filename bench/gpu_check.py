"""GPU check of the decode kernels: correctness against the references, timing, bandwidth, CUDA graphs.

On a machine with a CUDA GPU::

    NUMBA_ENABLE_CUDASIM=0 python bench/gpu_check.py            # about 2-4 minutes on one H100
    python bench/gpu_check.py --quick                            # smaller shapes, fewer repeats

For every kernel it (1) runs the kernel and its torch reference on the same
GPU inputs and counts mismatching outputs, (2) times both (median of N runs,
CUDA events; the reference is the torch chain the kernel replaces, run on the
GPU: ``graphrt.sampling.sample`` vectorised over the batch for sampling, the
per-row reference loops of the other modules), (3) reports the kernel's effective memory bandwidth (the bytes it must
read and write, once, over its time) against the device-to-device copy
bandwidth measured here, and finally (4) captures one decode step (sample ->
verify_accept -> commit) in a CUDA graph through cuda-python, replays it and
checks the replay against the eager step, and (5) decodes each mode with the executor capturing the
capture plan's segments as CUDA graphs against eager (tokens equal, ms per token; this section has
not yet run on a GPU). Prints Markdown tables.

Without a GPU it exits with status 2 and a clear message. ``--sim`` runs the
same code with tiny shapes in Numba's CUDA simulator on CPU (wall-clock
timings, no bandwidth or graph sections): a smoke test of this script.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclass
class Row:
    """One line of the kernel table."""

    op: str
    shape: str
    kernel_ms: float
    reference_ms: float
    bytes_moved: int
    mismatches: str

    def cells(self, copy_gbps: float | None) -> list[str]:
        gbps = self.bytes_moved / (self.kernel_ms * 1e-3) / 1e9 if self.kernel_ms > 0 else float("nan")
        frac = f"{100 * gbps / copy_gbps:.0f}%" if copy_gbps else "-"
        return [self.op, self.shape, f"{self.kernel_ms:.3f}", f"{self.reference_ms:.3f}",
                f"{self.reference_ms / self.kernel_ms:.1f}x", f"{gbps:.0f}", frac, self.mismatches]


class Timer:
    """Median wall time of a callable: CUDA events on a GPU, ``perf_counter`` in the simulator."""

    def __init__(self, gpu: bool, repeats: int, warmup: int = 2) -> None:
        self.gpu, self.repeats, self.warmup = gpu, repeats, warmup

    def median_ms(self, fn: Callable[[], object]) -> float:
        import torch

        for _ in range(self.warmup):
            fn()
        times = []
        if self.gpu:
            from graphrt.cuda_kernels.streams import Event

            torch.cuda.synchronize()
            for _ in range(self.repeats):
                start, end = Event(timing=True), Event(timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_ms(end))
        else:
            for _ in range(self.repeats):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def copy_bandwidth_gbps(timer: Timer, device: str) -> float:
    """Device-to-device copy bandwidth (read + write bytes per second) of a 1 GiB buffer."""
    import torch

    src = torch.empty(1 << 28, dtype=torch.float32, device=device)  # 1 GiB
    dst = torch.empty_like(src)
    ms = timer.median_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def mismatch_text(kernel_out, reference_out) -> str:
    """``"0"`` when every tensor agrees (float ones to rtol 1e-9), else ``"n/total"`` per output."""
    import torch

    outs_k = kernel_out if isinstance(kernel_out, tuple) else (kernel_out,)
    outs_r = reference_out if isinstance(reference_out, tuple) else (reference_out,)
    parts = []
    for k, r in zip(outs_k, outs_r):
        if k is None or r is None:
            continue
        k, r = k.detach().cpu(), r.detach().cpu()
        if k.dtype.is_floating_point:
            bad = ~torch.isclose(k.double(), r.double(), rtol=1e-9, atol=1e-12, equal_nan=True)
        else:
            bad = k != r
        parts.append(f"{int(bad.sum())}/{bad.numel()}")
    return ", ".join(parts) if any(not p.startswith("0/") for p in parts) else "0"


def run_kernels(args: argparse.Namespace, device: str, timer: Timer) -> list[Row]:
    import torch

    from graphrt.cuda_kernels.argmax_confidence import argmax_confidence, argmax_confidence_reference
    from graphrt.cuda_kernels.commit import commit, commit_reference
    from graphrt.cuda_kernels.denoise_select import denoise_select, denoise_select_reference
    from graphrt import noise, sampling
    from graphrt.cuda_kernels.sample import sample
    from graphrt.cuda_kernels.verify_accept import verify_accept, verify_accept_reference

    g = torch.Generator(device="cpu").manual_seed(0)
    B, L, V = args.batch, args.block, args.vocab
    rows: list[Row] = []

    def add(op: str, shape: str, kernel: Callable, reference: Callable, nbytes: int, fresh: Callable) -> None:
        """Check once on fresh inputs, then time both on their own copies."""
        k_in, r_in = fresh(), fresh()
        mism = mismatch_text(kernel(*k_in), reference(*r_in))
        k_in, r_in = fresh(), fresh()
        rows.append(Row(op, shape, timer.median_ms(lambda: kernel(*k_in)), timer.median_ms(lambda: reference(*r_in)),
                        nbytes, mism))
        print(f"  {op:<26} {shape:<22} done", file=sys.stderr, flush=True)

    logits = torch.randn(B, V, generator=g).to(device)  # [B, V] float32
    pos = torch.arange(B, device=device) + 1000
    for name, kw in (("sample T=0", dict(temperature=0.0)),
                     ("sample T=0.8", dict(temperature=0.8)),
                     ("sample T=0.8 k=50", dict(temperature=0.8, top_k=50)),
                     ("sample T=0.8 p=0.9", dict(temperature=0.8, top_p=0.9)),
                     ("sample T=0.8 k=50 p=0.9", dict(temperature=0.8, top_k=50, top_p=0.9))):
        out = torch.empty(B, dtype=torch.int64, device=device)
        add(name, f"[{B}, {V}] f32",
            lambda x, p, kw=kw, out=out: sample(x, p, seed=1, out=out, **kw),
            lambda x, p, kw=kw: sampling.sample(x, p, seed=1, stream=0, purpose=noise.SAMPLE,
                                                temperature=kw["temperature"], top_k=kw.get("top_k", 0),
                                                top_p=kw.get("top_p", 1.0)),
            logits.numel() * 4 + B * 16, lambda: (logits, pos))

    block_logits = torch.randn(B, L, V, generator=g).to(device)  # [B, L, V]
    tok = torch.empty(B, L, dtype=torch.int64, device=device)
    conf = torch.empty(B, L, dtype=torch.float64, device=device)
    add("argmax_confidence", f"[{B}, {L}, {V}] f32",
        lambda x: argmax_confidence(x, out_tokens=tok, out_conf=conf), argmax_confidence_reference,
        block_logits.numel() * 4 + B * L * 16, lambda: (block_logits,))

    mask_id = 0
    block = torch.randint(1, 50, (B, L), generator=g)
    block[:, 1:][torch.rand(B, L - 1, generator=g) < 0.6] = mask_id
    cand = torch.randint(1, 50, (B, L), generator=g).to(device)
    confs = torch.rand(B, L, generator=g).to(device)
    remaining = torch.empty(B, dtype=torch.int64, device=device)
    add("denoise_select t=0.9", f"[{B}, {L}]",
        lambda b, c, s: denoise_select(b, c, s, mask_token_id=mask_id, threshold=0.9, out_remaining=remaining),
        lambda b, c, s: denoise_select_reference(b, c, s, mask_token_id=mask_id, threshold=0.9,
                                                 out_remaining=torch.empty_like(remaining)),
        B * L * 8 * 3, lambda: (block.clone().to(device), cand, confs))
    add("denoise_select count=3", f"[{B}, {L}]",
        lambda b, c, s: denoise_select(b, c, s, mask_token_id=mask_id, threshold=None, count=3),
        lambda b, c, s: denoise_select_reference(b, c, s, mask_token_id=mask_id, threshold=None, count=3),
        B * L * 8 * 3, lambda: (block.clone().to(device), cand, confs))

    drafts = torch.randint(0, 3, (B, L), generator=g).to(device)
    ar = torch.randint(0, 3, (B, L), generator=g).to(device)
    start = torch.randint(0, 1000, (B,), generator=g).to(device)
    outs = [torch.empty(B, dtype=torch.int64, device=device) for _ in range(3)]
    add("verify_accept", f"[{B}, {L}]",
        lambda d, a: verify_accept(d, a, start=start, out_accepted=outs[0], out_bonus=outs[1], out_length=outs[2]),
        lambda d, a: verify_accept_reference(d, a, start=start), B * L * 16 + B * 24, lambda: (drafts, ar))

    n_rows = 4 * B
    lengths = torch.randint(0, 1000, (n_rows,), generator=g)
    sel = torch.randperm(n_rows, generator=g)[:B].to(device)
    add("commit", f"{B} of {n_rows} rows",
        lambda lens, v: commit(lens, v, rows=sel), lambda lens, v: commit_reference(lens, v, rows=sel),
        B * 24, lambda: (lengths.clone().to(device), start))
    return rows


def run_graph(args: argparse.Namespace, timer: Timer) -> list[list[str]]:
    """Capture sample -> verify_accept -> commit as one CUDA graph, replay, compare with eager."""
    import torch

    from graphrt.cuda_kernels.commit import commit
    from graphrt.cuda_kernels.graphs import capture
    from graphrt.cuda_kernels.sample import sample
    from graphrt.cuda_kernels.streams import Stream
    from graphrt.cuda_kernels.verify_accept import verify_accept

    B, L, V, dev = args.batch, args.block, args.vocab, "cuda"
    g = torch.Generator(device="cpu").manual_seed(1)
    logits = torch.randn(B, L, V, generator=g).to(dev)  # verify-forward logits [B, L, V]
    positions = (torch.arange(L).repeat(B, 1) + 100).to(dev)  # [B, L]
    seeds = torch.arange(B, dtype=torch.int64).to(dev)
    block = torch.randint(0, 4, (B, L), generator=g).to(dev)
    start = torch.full((B,), 99, dtype=torch.int64, device=dev)
    ar = torch.empty(B, L, dtype=torch.int64, device=dev)
    k, bonus, new_len = (torch.empty(B, dtype=torch.int64, device=dev) for _ in range(3))
    lengths = torch.zeros(2 * B, dtype=torch.int64, device=dev)
    rows = torch.arange(0, 2 * B, 2, device=dev)
    stream = Stream.create()

    def step() -> None:
        sample(logits, positions, seed=seeds, temperature=0.8, top_k=50, top_p=0.9, out=ar, stream=stream)
        verify_accept(block, ar, start=start, out_accepted=k, out_bonus=bonus, out_length=new_len, stream=stream)
        commit(lengths, new_len, rows=rows, stream=stream)

    with torch.cuda.stream(stream.torch()):
        step()
    stream.synchronize()
    eager = [t.clone() for t in (ar, k, bonus, new_len, lengths)]
    for t in (ar, k, bonus, new_len, lengths):
        t.fill_(-1)
    torch.cuda.synchronize()
    graph = capture(step, stream=stream, warmup=1)
    for t in (ar, k, bonus, new_len, lengths):
        t.fill_(-1)
    torch.cuda.synchronize()
    graph.replay()
    stream.synchronize()
    same = all(torch.equal(a, b) for a, b in zip(eager, (ar, k, bonus, new_len, lengths)))

    def eager_step() -> None:
        with torch.cuda.stream(stream.torch()):
            step()

    def replay() -> None:
        graph.replay()

    eager_ms, replay_ms = timer.median_ms(eager_step), timer.median_ms(replay)
    return [["sample -> verify_accept -> commit", f"[{B}, {L}, {V}] f32", str(graph.num_nodes),
             f"{eager_ms:.3f}", f"{replay_ms:.3f}", "yes" if same else "NO"]]


def run_captured_policies(repeats: int) -> list[list[str]]:
    """Decode with the executor's CUDA graphs of the capture plan's segments vs eager (NOT YET RUN ON A GPU).

    A random model of the shipped shape on the GPU; each mode decodes the same prompt with
    ``GRAPHRT_CUDA_GRAPHS=0`` (eager) and ``=1`` (segments captured on their second run,
    replayed after): tokens must be equal; reports ms per token and the segments replayed.
    """
    import torch

    import graphrt
    from graphrt.frontends.models.checkpoint import init_random_
    from graphrt.frontends.models.config import default_test_config
    from graphrt.frontends.models.transformer import Transformer, TransformerBackbone

    cfg = default_test_config(vocab_size=4096, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                              head_dim=48, block_size=8, mask_token_id=3)
    net = init_random_(Transformer(cfg), 0).to("cuda").eval()
    model = graphrt.Model(TransformerBackbone(net, max_rows=1))
    prompt = list(range(10, 74))
    rows = []
    for mode in ("ar", "self-spec", "self-spec-quadratic"):
        out = {}
        for flag in ("0", "1"):
            os.environ["GRAPHRT_CUDA_GRAPHS"] = flag
            compiled = graphrt.compile(mode, model)  # lowered per flag: a fresh compile each
            times, res, segs = [], None, []
            for _ in range(max(2, repeats // 5)):
                session = graphrt.Session(model.backbone)
                rid = session.add(compiled, prompt, graphrt.GenerationParams(max_new_tokens=48, ignore_eos=True))
                req = session._waiting[0]
                torch.cuda.synchronize()
                t = time.perf_counter()
                res = session.run()[rid]
                torch.cuda.synchronize()
                times.append((time.perf_counter() - t) / len(res.tokens))
                segs = list(req.program.arena.segments.values())
            out[flag] = (res, statistics.median(times) * 1e3, segs)
        (eager, e_ms, _), (graph, g_ms, segs) = out["0"], out["1"]
        replayed = sum(s.graph is not None and not s.reason for s in segs)
        why = "; ".join(sorted({s.reason for s in segs if s.reason}))[:80]
        rows.append([mode, f"{e_ms:.3f}", f"{g_ms:.3f}", f"{replayed}/{len(segs)}" + (f" ({why})" if why else ""),
                     "yes" if eager.tokens == graph.tokens else "NO"])
    os.environ.pop("GRAPHRT_CUDA_GRAPHS", None)
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes and fewer repeats")
    parser.add_argument("--sim", action="store_true", help="tiny shapes in Numba's CUDA simulator (CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (median)")
    args = parser.parse_args(argv)
    if args.sim:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
        args.batch, args.block, args.vocab, repeats = 2, 4, 37, 2
    else:
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0")
        from graphrt.cuda_kernels.streams import cuda_available, cuda_unavailable_reason

        if os.environ["NUMBA_ENABLE_CUDASIM"] not in ("", "0"):
            print("gpu_check: NUMBA_ENABLE_CUDASIM is set; unset it (or use --sim)", file=sys.stderr)
            return 2
        if not cuda_available():
            print("gpu_check: CUDA requested but no CUDA device is available: "
                  f"{cuda_unavailable_reason()}. Run on a GPU machine, or use --sim for a CPU smoke test.",
                  file=sys.stderr)
            return 2
        args.batch, args.block, args.vocab = (16, 8, 32_000) if args.quick else (64, 16, 151_936)
        repeats = 10 if args.quick else 30
    repeats = args.repeats or repeats
    import torch

    gpu = not args.sim
    device = "cuda" if gpu else "cpu"
    timer = Timer(gpu, repeats)
    t0 = time.perf_counter()
    name = torch.cuda.get_device_name() if gpu else "Numba CUDA simulator (CPU)"
    print(f"# gpu_check on {name}\n", flush=True)
    copy_gbps = copy_bandwidth_gbps(timer, device) if gpu else None
    if copy_gbps:
        print(f"device-to-device copy bandwidth: {copy_gbps:.0f} GB/s (read + write)\n")
    rows = run_kernels(args, device, timer)
    print(table(["op", "shape", "kernel ms", "torch ref ms", "speedup", "eff. GB/s", "of copy BW", "mismatches"],
                [r.cells(copy_gbps) for r in rows]))
    if gpu:
        print("\n" + table(["captured decode step", "shape", "graph nodes", "eager ms", "replay ms", "replay == eager"],
                           run_graph(args, timer)))
        print("\n" + table(["mode (executor CUDA graphs)", "eager ms/token", "graphs ms/token", "segments replayed",
                            "tokens equal"], run_captured_policies(repeats)))
    print(f"\nmedian of {repeats} runs each; total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
