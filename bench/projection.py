"""A roofline projection for the released 8B model on one H100 / H200 (NOT measured: no GPU was used).

Each forward of ``rows x width`` tokens is costed as the slower of reading the weights
(plus the rows' K/V) from HBM and doing its FLOPs:

    t = max((weight_bytes + kv_bytes) / (HBM bandwidth * bw_eff), flops / (peak * flop_eff))

A mode's projected speed is its emitted tokens over the summed cost of its forwards,
taken from a measured run (the forward counts and widths it issued) or from the 8B's
reported tokens per forward. While ``rows x width`` stays under the ridge point
(peak / bandwidth, about 300 tokens in bf16) a forward costs what a 1-token one
does, so tokens per forward become speed one for one; past it they stop paying.
"""

from __future__ import annotations

from typing import Any

# Assumptions (stated in every output; change them here).
MODEL_8B = {  # a Ministral-3-8B-shaped decoder (the released 8B's architecture family)
    "layers": 34, "hidden": 4096, "intermediate": 14336, "heads": 32, "kv_heads": 8, "head_dim": 128,
    "vocab": 131072, "bytes_per_param": 2, "context": 1024,
}
GPUS = {"H100 SXM": {"hbm_tb_s": 3.35, "bf16_tflop_s": 989.0}, "H200": {"hbm_tb_s": 4.8, "bf16_tflop_s": 989.0}}
EFFICIENCY = {"bandwidth": 0.8, "flops": 0.6}  # achieved fractions of the data-sheet figures (assumed)
REPORTED_TPF_8B = {"ar": 1.00, "diffusion": 2.57, "self-spec": 5.99, "self-spec-quadratic": 6.38}
MODES = ("ar", "diffusion", "self-spec", "self-spec-quadratic")


def shape_numbers(m: dict[str, Any] = MODEL_8B) -> dict[str, float]:
    """Parameter count, bytes read per forward, FLOPs per token, K/V bytes per cached token."""
    d, kvd = m["hidden"], m["kv_heads"] * m["head_dim"]
    per_layer = d * m["heads"] * m["head_dim"] * 2 + d * kvd * 2 + 3 * d * m["intermediate"]
    matmul = m["layers"] * per_layer + m["vocab"] * d  # the output head is a matmul; the embedding is a lookup
    return {"params": matmul + m["vocab"] * d, "weight_bytes": matmul * m["bytes_per_param"],
            "flops_per_token": 2 * matmul, "attn_flops_per_token_per_key": 4 * m["layers"] * m["heads"] * m["head_dim"],
            "kv_bytes_per_token": 2 * m["layers"] * kvd * m["bytes_per_param"]}


def forward_seconds(rows: int, width: int, gpu: dict[str, float], m: dict[str, Any] = MODEL_8B) -> tuple[float, str]:
    """Roofline time of one forward of ``rows x width`` tokens over ``m['context']`` cached tokens, and its bound."""
    s = shape_numbers(m)
    ctx = m["context"]
    moved = s["weight_bytes"] + rows * (ctx + width) * s["kv_bytes_per_token"]
    flops = rows * width * (s["flops_per_token"] + s["attn_flops_per_token_per_key"] * (ctx + width))
    t_mem = moved / (gpu["hbm_tb_s"] * 1e12 * EFFICIENCY["bandwidth"])
    t_math = flops / (gpu["bf16_tflop_s"] * 1e12 * EFFICIENCY["flops"])
    return max(t_mem, t_math), "memory" if t_mem >= t_math else "compute"


def mode_width(mode: str, block: int) -> int:
    """The width of a mode's steady-state forwards (blocks of ``block``)."""
    return {"ar": 1, "diffusion": block, "self-spec": block, "self-spec-quadratic": block * (block + 1)}[mode]


def max_tpf(mode: str, block: int) -> float:
    """The most tokens per forward a mode can reach with blocks of ``block`` (steady state)."""
    return {"ar": 1.0, "diffusion": block / 2, "self-spec": block / 2, "self-spec-quadratic": float(block)}[mode]


def project(records: list[dict[str, Any]], blocks: tuple[int, ...] = (8, 32)) -> dict[str, Any]:
    """Projected tokens/s per mode, GPU and batch, from measured forward mixes and from reported TPFs."""
    rows: list[dict[str, Any]] = []
    measured = [r for r in records if r["contender"].startswith("graphrt") and r["forwards_by_width"]]
    seen = set()
    for r in sorted(measured, key=lambda r: r["backend"] != "eager"):
        key = (r["mode"], r["batch"])
        if key in seen:
            continue
        seen.add(key)
        for gname, gpu in GPUS.items():
            total, bounds = 0.0, set()
            for w, n in r["forwards_by_width"].items():
                t, bound = forward_seconds(r["batch"], int(w), gpu)
                total += n * t
                bounds.add(bound)
            rows.append({"source": "measured forward mix (shipped model)", "mode": r["mode"], "batch": r["batch"],
                         "tpf": r["tpf"], "gpu": gname, "tokens_per_s": r["tokens"] / total,
                         "bound": "/".join(sorted(bounds))})
    for block in blocks:
        for mode in [m for m in MODES if REPORTED_TPF_8B[m] <= max_tpf(m, block)]:  # reachable at this block
            for batch in (1, 8):
                for gname, gpu in GPUS.items():
                    t, bound = forward_seconds(batch, mode_width(mode, block), gpu)
                    rows.append({"source": f"reported 8B TPF, block {block}", "mode": mode, "batch": batch,
                                 "tpf": REPORTED_TPF_8B[mode], "gpu": gname,
                                 "tokens_per_s": REPORTED_TPF_8B[mode] * batch / t, "bound": bound})
    s = shape_numbers()
    ridge = {g: v["bf16_tflop_s"] * EFFICIENCY["flops"] / (v["hbm_tb_s"] * EFFICIENCY["bandwidth"])
             * s["weight_bytes"] / s["flops_per_token"] for g, v in GPUS.items()}
    return {"assumptions": {"model": MODEL_8B, "params": s["params"], "gpus": GPUS, "efficiency": EFFICIENCY,
                            "reported_tpf": REPORTED_TPF_8B, "per_forward_overhead_s": 0.0,
                            "note": "roofline only: no kernel launch, host or sampling cost (CUDA graphs assumed); "
                                    "not run on a GPU"},
            "ridge_tokens_per_forward": ridge, "rows": rows}


def projection_table(proj: dict[str, Any]) -> str:
    """Markdown: projected tokens/s per (source, mode) for batch 1 / 8 on each GPU."""
    a = proj["assumptions"]
    m = a["model"]
    eff = a["efficiency"]
    lines = [f"PROJECTION (roofline, not measured; no GPU was used): released 8B on one GPU. Assumed: "
             f"{a['params'] / 1e9:.1f} B parameters ({m['layers']} layers, hidden {m['hidden']}, "
             f"MLP {m['intermediate']}, {m['heads']}/{m['kv_heads']} heads of {m['head_dim']}, vocab {m['vocab']}), "
             f"bf16 weights and K/V, {m['context']} cached tokens per row, {int(100 * eff['bandwidth'])}% of HBM "
             f"bandwidth and {int(100 * eff['flops'])}% of dense bf16 peak achieved, no per-forward overhead. "
             "Ridge point: " + ", ".join(f"{g} {v:.0f} tokens per forward"
                                         for g, v in proj["ridge_tokens_per_forward"].items()) + ".",
             "", "| source | mode | TPF | " + " | ".join(f"{g} batch {b} tok/s" for g in GPUS for b in (1, 8))
             + " | bound (batch 1 / 8) |", "|---|---|---:|" + "---:|" * (2 * len(GPUS)) + "---|"]
    keys = list(dict.fromkeys((r["source"], r["mode"]) for r in proj["rows"]))
    for src, mode in keys:
        rs = {(r["gpu"], r["batch"]): r for r in proj["rows"] if r["source"] == src and r["mode"] == mode}
        tpf = next(iter(rs.values()))["tpf"]
        cells = [f"{rs[(g, b)]['tokens_per_s']:.0f}" if (g, b) in rs else "-" for g in GPUS for b in (1, 8)]
        g0 = next(iter(GPUS))
        bound = " / ".join(rs[(g0, b)]["bound"] if (g0, b) in rs else "-" for b in (1, 8))
        lines.append(f"| {src} | {mode} | {tpf:.2f} | " + " | ".join(cells) + f" | {bound} |")
    return "\n".join(lines)
