"""The README's Python examples run as written (against the shipped model)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _block(marker: str) -> str:
    found = [b for b in BLOCKS if marker in b]
    assert found, f"README: expected a python block containing {marker!r}, found none"
    return found[0]


@pytest.fixture(scope="module")
def namespace() -> dict:
    ns: dict = {}
    exec(_block("model = graphrt.load()"), ns)  # the quick start
    return ns


def test_quick_start_runs(namespace) -> None:
    out = namespace["out"]
    assert out.text and out.forwards > 0 and 0 < out.tpf


def test_declared_policy_equals_builtin_ar(namespace) -> None:
    import graphrt

    ns = dict(namespace)
    exec(_block("def build_ar(config):"), ns)
    mine = graphrt.generate(ns["model"], "x = ", mode=graphrt.Policy("my-ar", ns["build_ar"]), max_new_tokens=12)
    builtin = graphrt.generate(ns["model"], "x = ", mode="ar", max_new_tokens=12)
    assert mine.tokens == builtin.tokens


def test_claims_of_equality_with_ar_hold(namespace) -> None:
    """Every README line marked ``# == AR`` gives the AR output when run again with ``mode="ar"``."""
    import graphrt

    claims = [line.split("#")[0].strip() for b in BLOCKS for line in b.splitlines() if "# == AR" in line]
    assert claims, "README: expected at least one example marked '# == AR', found none"
    for call in claims:
        assert re.search(r'mode="[^"]+"', call), f"README: expected a mode=\"...\" argument in {call!r}"
        ns = dict(namespace, graphrt=graphrt)
        got = eval(call, ns)
        want = eval(re.sub(r'mode="[^"]+"', 'mode="ar"', call), ns)
        assert got.tokens == want.tokens, f"README claims {call!r} equals AR; it does not"
        assert got.mode != want.mode


def test_the_policy_guide_builds_prompt_lookup_as_written() -> None:
    import graphrt

    guide = Path(__file__).resolve().parents[1] / "docs" / "writing_a_policy.md"
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.S)
    policy_block = next(b for b in blocks if "def build_prompt_lookup" in b)
    run_block = next(b for b in blocks if "graphrt.generate(" in b)
    ns: dict = {}
    exec(policy_block, ns)
    exec(run_block, ns)  # asserts the built-in mode's output equals AR's
    mine = graphrt.generate(ns["model"], "import os\nimport sys\n", mode=ns["policy"], max_new_tokens=64)
    assert mine.tokens == ns["ar"].tokens and mine.forwards == ns["out"].forwards < ns["ar"].forwards
