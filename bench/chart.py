"""The benchmark's chart: measured tokens/s side by side, the context sweep, and the GPU roofline projection."""

from __future__ import annotations

from typing import Any


def plot(doc: dict[str, Any], path: str) -> None:
    """Write a PNG with up to three panels from a ``graphrt bench --json`` document."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from projection import GPUS, forward_seconds, mode_width

    records, sweep = doc["records"], doc.get("context_sweep")
    fig, axes = plt.subplots(1, 4 if sweep else 3, figsize=(22 if sweep else 17, 5.5))
    ax = axes[0]
    batches = sorted({r["batch"] for r in records})
    labels = list(dict.fromkeys(f"{r['contender']}\n{r['mode']}" for r in records))
    width = 0.8 / len(batches)
    for i, b in enumerate(batches):
        vals = [next((r["tokens_per_s"] for r in records if r["batch"] == b
                      and f"{r['contender']}\n{r['mode']}" == lab), 0.0) for lab in labels]
        ax.barh([k + i * width for k in range(len(labels))], vals, height=width, label=f"batch {b}")
    ax.set_yticks([k + width * (len(batches) - 1) / 2 for k in range(len(labels))])
    ax.set_yticklabels(labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("tokens/s (median)")
    m = doc["machine"]
    ax.set_title(f"measured, CPU ({m['cores']} cores, {m['threads']} threads)", fontsize=9)
    ax.legend(fontsize=7)
    if sweep:
        ax = axes[1]
        for name in dict.fromkeys(r["contender"] for r in sweep):
            rows = sorted((r for r in sweep if r["contender"] == name), key=lambda r: r["prompt_tokens"])
            ax.plot([r["prompt_tokens"] for r in rows], [r["ms_per_token"] for r in rows], marker="o", label=name)
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel("ms per generated token (prefill included)")
        ax.set_title("context sweep, batch 1 (measured, CPU)", fontsize=9)
        ax.legend(fontsize=7)
    ax = axes[-2]
    xs = [2 ** k for k in range(0, 13)]
    for gname, gpu in GPUS.items():
        ax.plot(xs, [forward_seconds(1, x, gpu)[0] * 1e3 for x in xs], label=gname)
    for mode, marker in zip(("ar", "self-spec", "self-spec-quadratic"), "osD"):
        for b in (1, 8):
            w = b * mode_width(mode, 8)
            ax.scatter([w], [forward_seconds(1, w, GPUS["H100 SXM"])[0] * 1e3], marker=marker,
                       label=f"{mode} batch {b} (block 8)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens per forward (rows x width)")
    ax.set_ylabel("ms per forward")
    ax.set_title("PROJECTION, 8B roofline (not measured)", fontsize=9)
    ax.legend(fontsize=6)
    ax = axes[-1]
    src = "reported 8B TPF, block 32"
    rows = [r for r in doc["projection"]["rows"] if r["source"] == src]
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    series = list(dict.fromkeys((r["gpu"], r["batch"]) for r in rows))
    bw = 0.8 / len(series)
    for i, (g, b) in enumerate(series):
        vals = [next((r["tokens_per_s"] for r in rows if r["mode"] == m and r["gpu"] == g and r["batch"] == b), 0)
                for m in modes]
        ax.bar([k + i * bw for k in range(len(modes))], vals, width=bw, label=f"{g}, batch {b}")
    ax.set_xticks([k + bw * (len(series) - 1) / 2 for k in range(len(modes))])
    ax.set_xticklabels(modes, fontsize=7)
    ax.set_ylabel("tokens/s")
    ax.set_title(f"PROJECTION, 8B tokens/s ({src[:-9]}, block 32; not measured)", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    import json
    import sys

    plot(json.loads(open(sys.argv[1]).read()), sys.argv[2])  # python bench/chart.py RUN.json OUT.png
