"""The worked example of docs/testing_kernels.md runs as written (in the simulator)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "testing_kernels.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_doc_example_kernel_passes_and_a_broken_one_is_reported():
    blocks = _python_blocks()
    namespace: dict = {}
    for code in blocks[1:]:  # block 0 is the conftest (the simulator is already on here)
        exec(compile(code, str(DOC), "exec"), namespace)
    namespace["test_my_argmax"]()

    broken = blocks[1].replace("if v > best:", "if v >= best:")
    exec(compile(broken, str(DOC), "exec"), namespace)
    with pytest.raises(AssertionError, match="kernel differs from reference"):
        namespace["test_my_argmax"]()
