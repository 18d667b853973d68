"""Decode traces: which token was committed at which forward, which drafts were rejected.

:class:`TracingBackbone` wraps any backbone and records every forward's inputs
per cache row; :class:`DecodeTrace` combines those records with the tokens the
session emitted after each forward, and :func:`draw_trace` draws the result
(HTML table or PNG): one row per forward, one column per absolute position.

A position's token counts as committed at the forward that decided it: the
round that emitted it, or earlier, the forward just before the first one that
reads it back as a settled input (read without writing it, or denoised from a
mask without the draft adapter by the forward before). A non-mask input that differs
from the final output at its position is a rejected draft.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphrt.backbone import Backbone, ForwardBatch

STATE_COLORS = {"context": "#dbe8f6", "mask": "#d9d9d9", "accepted": "#c7e9c0", "rejected": "#fcbba1",
                "draft": "#fdd49e", "none": "#ffffff"}
STATE_HELP = {"context": "input already committed", "mask": "mask input", "accepted": "draft input, accepted",
              "rejected": "draft input, rejected", "draft": "draft input, past the output's end",
              "none": "no input here"}


@dataclass
class ForwardRecord:
    """One row of one backbone call: its tokens, positions and flags."""

    tokens: list[int]
    positions: list[int]
    kv_write: list[bool]
    adapter: list[bool]
    kind: str


class TracingBackbone:
    """A backbone that records each forward's inputs, row by row (everything else delegates).

    Parameters
    ----------
    inner:
        Any :class:`~graphrt.backbone.Backbone`.
    """

    def __init__(self, inner: Backbone) -> None:
        self.inner = inner
        self.records: dict[int, list[ForwardRecord]] = {}

    def forward(self, batch: ForwardBatch) -> Any:
        """Record ``batch`` per row, then run the wrapped backbone."""
        for i, row in enumerate(batch.rows):
            n = int(batch.valid[i].sum()) if batch.valid is not None else batch.tokens.shape[1]
            self.records.setdefault(row, []).append(ForwardRecord(
                batch.tokens[i, :n].tolist(), batch.positions[i, :n].tolist(),
                [bool(x) for x in batch.kv_write[i, :n].tolist()],
                [bool(x) for x in batch.adapter[i, :n].tolist()] if batch.adapter is not None else [False] * n,
                batch.kind))
        return self.inner.forward(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class DecodeTrace:
    """One request's forwards and what each round emitted.

    Attributes
    ----------
    mode:
        The policy's name.
    prompt_len:
        Prompt tokens (output position 0 is absolute position ``prompt_len``).
    mask_token_id:
        The mask id (inputs equal to it are masks).
    forwards:
        The request's forward inputs, in order.
    emitted:
        ``emitted[f]``: the tokens emitted in the round of forward ``f``.
    tokens:
        The final output.
    labels:
        Optional text of each token id (for drawing).
    cycle_info:
        What an adaptive policy decided per cycle (``GenerationResult.cycle_info``: draft source,
        verified width, accepted drafts); each is shown at the forward whose round emitted it.
    """

    mode: str
    prompt_len: int
    mask_token_id: int
    forwards: list[ForwardRecord]
    emitted: list[list[int]]
    tokens: list[int]
    labels: dict[int, str] = field(default_factory=dict)
    cycle_info: list[tuple[int, ...]] = field(default_factory=list)

    def choices(self) -> dict[int, str]:
        """Forward index -> the decision of the cycle it ended (``lookup w=4 k=2``); empty for fixed modes.

        The first emission is the prefill's token; each later emitting forward ends one cycle.
        """
        from graphrt.adaptive import SOURCES

        emitting = [f for f, toks in enumerate(self.emitted) if toks][1:]
        out = {}
        for f, info in zip(emitting, self.cycle_info):
            s, w, k = (list(info) + [0, 0, 0])[:3]
            out[f] = f"{SOURCES[s] if 0 <= s < len(SOURCES) else s} w={w} k={k}"
        return out

    def committed_at(self) -> dict[int, int]:
        """Absolute position -> index of the forward that committed its output token."""
        out: dict[int, int] = {}
        pos = self.prompt_len
        for f, toks in enumerate(self.emitted):
            for _ in toks:
                out[pos] = f
                pos += 1
        final = self.final()
        for f, rec in enumerate(self.forwards[1:], start=1):
            prev = self.forwards[f - 1]
            unmasked = {p for t, p, a in zip(prev.tokens, prev.positions, prev.adapter)
                        if t == self.mask_token_id and not a}  # denoised by f - 1 (drafts use the adapter)
            for tok, p, w in zip(rec.tokens, rec.positions, rec.kv_write):
                settled = not w or p in unmasked
                if settled and tok != self.mask_token_id and final.get(p) == tok and f - 1 < out.get(p, f):
                    out[p] = f - 1
        return out

    def final(self) -> dict[int, int]:
        """Absolute position -> output token."""
        return {self.prompt_len + i: t for i, t in enumerate(self.tokens)}

    def rejected_drafts(self) -> list[tuple[int, int, int]]:
        """``(forward, position, token)`` of every draft input the forward did not commit."""
        final, commit = self.final(), self.committed_at()
        return [(f, p, t) for f, rec in enumerate(self.forwards) for t, p in zip(rec.tokens, rec.positions)
                if self._state(f, t, p, final, commit) == "rejected"]

    def _state(self, f: int, t: int, p: int, final: dict[int, int], commit: dict[int, int]) -> str:
        """What input ``t`` at position ``p`` of forward ``f`` was (a key of ``STATE_COLORS``)."""
        if t == self.mask_token_id:
            return "mask"
        if p < self.prompt_len:
            return "context"
        if p not in final:
            return "draft"
        if final[p] != t or commit[p] > f:  # wrong, or right but after an earlier mismatch
            return "rejected"
        return "context" if commit[p] < f else "accepted"

    def cells(self) -> tuple[list[int], list[list[tuple[str, str, str]]]]:
        """The picture as data: the positions drawn, and per forward per position
        ``(input label, input state, committed label)`` (``""`` where none)."""
        final, commit = self.final(), self.committed_at()
        lo = self.prompt_len - 1
        hi = max([self.prompt_len + len(self.tokens)] + [p + 1 for r in self.forwards for p in r.positions])
        cols = list(range(lo, hi))
        rows = []
        for f, rec in enumerate(self.forwards):
            by_pos: dict[int, tuple[str, str]] = {}
            for t, p in zip(rec.tokens, rec.positions):
                if p < lo:
                    continue
                state = self._state(f, t, p, final, commit)
                old = by_pos.get(p)
                if old is None or state == "rejected":
                    by_pos[p] = (self.label(t), state)
            row = []
            for p in cols:
                inp, state = by_pos.get(p, ("", "none"))
                row.append((inp, state, self.label(final[p]) if commit.get(p) == f else ""))
            rows.append(row)
        return cols, rows

    def label(self, token: int) -> str:
        """Short text for a token id."""
        if token == self.mask_token_id:
            return "M"
        text = self.labels.get(token)
        return repr(text)[1:-1].replace(" ", "\u00b7")[:6] if text is not None else str(token)


def record_labels(trace: DecodeTrace, tokenizer: Any) -> None:
    """Fill ``trace.labels`` with each seen token's text (via ``tokenizer.decode``)."""
    seen = {t for r in trace.forwards for t in r.tokens} | set(trace.tokens)
    trace.labels = {t: tokenizer.decode([t]) for t in seen}


def draw_trace(trace: DecodeTrace, out: str | os.PathLike[str]) -> Path:
    """Draw ``trace`` to ``out`` (``.html`` table or ``.png`` picture).

    Raises
    ------
    ValueError
        For another suffix.
    """
    path = Path(out)
    suffix = path.suffix.lower()
    if suffix == ".html":
        path.write_text(_trace_html(trace), encoding="utf-8")
    elif suffix == ".png":
        _trace_png(trace, path)
    else:
        raise ValueError(f"--trace: expected a file ending in .html or .png, found {str(out)!r}")
    return path


def _title(trace: DecodeTrace) -> str:
    n = len(trace.forwards)
    return (f"{trace.mode}: {len(trace.tokens)} tokens in {n} forwards (TPF {len(trace.tokens) / max(n, 1):.2f}), "
            f"{len(trace.rejected_drafts())} rejected draft tokens")


def _trace_html(trace: DecodeTrace) -> str:
    cols, rows = trace.cells()
    head = "".join(f"<th>{p}</th>" for p in cols)
    body = []
    choices = trace.choices()
    for f, row in enumerate(rows):
        tds = []
        for inp, state, com in row:
            text = html.escape(inp) + (f"<br><b>&rarr;{html.escape(com)}</b>" if com else "")
            border = "border:2px solid #238b45;" if com else ""
            tds.append(f'<td style="background:{STATE_COLORS[state]};{border}" title="{STATE_HELP[state]}">{text}</td>')
        kind = trace.forwards[f].kind
        note = f"<br><small>{html.escape(choices[f])}</small>" if f in choices else ""
        body.append(f"<tr><th>{f} <small>{html.escape(kind)}</small>{note}</th>{''.join(tds)}</tr>")
    legend = " ".join(f'<span style="background:{c};padding:2px 6px">{STATE_HELP[s]}</span>'
                      for s, c in STATE_COLORS.items() if s != "none")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>graphrt trace</title><style>"
            "td,th{font:11px monospace;padding:2px 4px;text-align:center;border:1px solid #eee}"
            "table{border-collapse:collapse}</style></head><body>"
            f"<h3>{html.escape(_title(trace))}</h3><p>rows: forwards; columns: absolute positions; "
            f"<b>&rarr;x</b> in a green frame: token x committed by that forward.</p><p>{legend}</p>"
            f"<table><tr><th>forward</th>{head}</tr>{''.join(body)}</table></body></html>\n")


def _trace_png(trace: DecodeTrace, path: Path) -> None:
    from graphrt.frontends.cli.output import pyplot

    plt = pyplot(str(path))
    from matplotlib.patches import Patch, Rectangle

    cols, rows = trace.cells()
    w, h = len(cols), len(rows)
    fig, ax = plt.subplots(figsize=(min(2 + 0.45 * w, 40), min(1.8 + 0.32 * h, 60)))
    for f, row in enumerate(rows):
        for j, (inp, state, com) in enumerate(row):
            ax.add_patch(Rectangle((j, f), 1, 1, facecolor=STATE_COLORS[state],
                                   edgecolor="#238b45" if com else "#ffffff", linewidth=2 if com else 0.5))
            text = com or inp
            if text:
                ax.text(j + 0.5, f + 0.5, text, ha="center", va="center", fontsize=6,
                        fontweight="bold" if com else "normal", color="#7f0000" if state == "rejected" else "black")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    step = max(1, w // 24)
    ax.set_xticks([j + 0.5 for j in range(0, w, step)], [str(cols[j]) for j in range(0, w, step)], fontsize=7)
    ystep = max(1, h // 30)
    choices = trace.choices()
    ax.set_yticks([f + 0.5 for f in range(0, h, ystep)],
                  [f"{f} {choices[f]}" if f in choices else str(f) for f in range(0, h, ystep)], fontsize=7)
    ax.set_xlabel("absolute position")
    ax.set_ylabel("forward")
    ax.set_title(_title(trace), fontsize=9)
    handles = [Patch(facecolor=c, label=STATE_HELP[s]) for s, c in STATE_COLORS.items() if s != "none"]
    handles.append(Patch(facecolor="white", edgecolor="#238b45", linewidth=2, label="committed by this forward"))
    ax.legend(handles=handles, fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["TracingBackbone", "DecodeTrace", "ForwardRecord", "draw_trace", "record_labels"]
