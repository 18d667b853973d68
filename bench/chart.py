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
    fig, axes = plt.subplots(1, 3 if sweep else 2, figsize=(17 if sweep else 12, 5.5))
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
    ax = axes[-1]
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
