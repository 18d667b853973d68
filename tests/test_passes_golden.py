"""Golden before/after printouts of the default pipeline for each built-in mode.

Regenerate after an intended change with::

    GRAPHRT_REGEN_GOLDEN=1 pytest tests/test_passes_golden.py

(the regenerating run skips: it checks nothing) and review the diff of
``tests/golden/passes_*.txt`` like code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from graphrt.backbone import BackboneConfig
from graphrt.frontends import policies
from graphrt.ir import Graph
from graphrt.passes import default_pipeline

GOLDEN = Path(__file__).parent / "golden"
REGEN = "GRAPHRT_REGEN_GOLDEN"
CONFIG = BackboneConfig(vocab_size=96, max_positions=256, mask_token_id=95, bos_token_id=1, eos_token_id=2,
                        block_size=4)


def render(mode: str, graph: Graph) -> str:
    """The golden text of ``mode``: pipeline, O0 graph, per-pass change log, O1 graph and its plans."""
    pipeline = default_pipeline(1, dims={"V": CONFIG.vocab_size})
    result = pipeline.run(graph)
    ann = result.graph.annotations
    sections = [
        f"# graphrt passes golden: {mode} (vocab 96, block 4); regenerate with {REGEN}=1",
        "## pipeline", pipeline.describe(),
        "## before (O0)", str(graph),
        "## pass report", result.format_report(timings=False),
        "## after (O1)", str(result.graph),
        "## memory plan (V = 96, float64)", ann["memory"].summary({"V": CONFIG.vocab_size}),
        "## streams", ann["streams"].format(),
        "## capture", ann["capture"].format(),
    ]
    return "\n\n".join(sections) + "\n"


CORE_MODES = ("ar", "diffusion", "self-spec")
"""Modes whose golden file must exist; other modes are checked once their file is checked in."""


def _modes() -> list[str]:
    return list(policies.MODES)


@pytest.mark.parametrize("mode", _modes())
def test_golden_pipeline_printout(mode: str) -> None:
    try:
        graph = policies.policy_for_mode(mode).build(CONFIG)
    except ImportError as exc:  # a mode whose transformation is not in this tree yet
        pytest.skip(f"mode {mode} is not available: {exc}")
    text = render(mode, graph)
    path = GOLDEN / f"passes_{mode}.txt"
    if os.environ.get(REGEN):
        changed = not path.exists() or path.read_text() != text
        path.write_text(text)
        pytest.skip(f"{REGEN} is set: {'rewrote' if changed else 'kept'} {path.name} without checking it; "
                    "review the diff, then run again without it")
    if not path.exists():
        message = f"golden file {path} is missing; create it with {REGEN}=1 pytest {Path(__file__).name}"
        if mode not in CORE_MODES:
            pytest.skip(message)
        pytest.fail(message)
    want = path.read_text()
    if text != want:
        diff = _first_difference(want, text)
        pytest.fail(f"{path.name} differs from the pipeline's printout ({diff}); if the change is intended, "
                    f"regenerate with {REGEN}=1 pytest {Path(__file__).name} and review the diff")


def _first_difference(want: str, got: str) -> str:
    for i, (a, b) in enumerate(zip(want.splitlines(), got.splitlines())):
        if a != b:
            return f"line {i + 1}: expected {a!r}, found {b!r}"
    return f"expected {len(want.splitlines())} lines, found {len(got.splitlines())}"
