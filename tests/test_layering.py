"""The house's structure: no import circle, the layers import downward only, no file over 800 lines,
one reference per op.

The import graph is read statically (AST): every ``import`` and ``from ... import`` of a project
module, at module level or inside a function (except under ``if TYPE_CHECKING:``), and every
``importlib.import_module("...")`` with a literal name.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import networkx as nx
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"graphrt": "graphrt", "passes": "graphrt.passes", "cuda_kernels": "graphrt.cuda_kernels",
          "frontends": "graphrt.frontends"}
MAX_LINES = 800


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, package in LAYERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join([package, *parts])] = path
    return mods


MODULES = _modules()


def _walk(tree: ast.AST):
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _imported_names(module: str, path: Path) -> list[str]:
    """Dotted names ``module`` imports (submodules where ``from x import y`` names one)."""
    names = []
    for node in _walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = base + (f".{node.module}" if node.module else "")
            else:
                source = node.module or ""
            names += [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names]
        elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)) \
                and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module" \
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            names.append(node.args[0].value)
    return names


def _project_module(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> nx.DiGraph:
    """Project module -> project modules it imports."""
    graph = nx.DiGraph()
    for module, path in MODULES.items():
        graph.add_node(module)
        for name in _imported_names(module, path):
            target = _project_module(name)
            if target is not None and target != module:
                graph.add_edge(module, target)
    return graph


def test_no_import_circle_among_project_modules() -> None:
    cycles = sorted(sorted(c) for c in nx.simple_cycles(import_graph()))
    assert cycles == [], f"expected no import circle, found {cycles}"


def _layer(module: str) -> str:
    for package in ("graphrt.frontends", "graphrt.cuda_kernels", "graphrt.passes"):
        if module == package or module.startswith(package + "."):
            return package
    return "graphrt"


def test_the_core_and_the_passes_never_import_the_frontends() -> None:
    graph = import_graph()
    upward = [(m, t) for m, t in graph.edges if _layer(m) in ("graphrt", "graphrt.passes")
              and _layer(t) == "graphrt.frontends"]
    assert upward == [], f"expected no import of graphrt.frontends from the core or the passes, found {upward}"
    for module, path in MODULES.items():  # nor by a name in a string (importlib, __import__, a lazy getattr)
        if _layer(module) in ("graphrt", "graphrt.passes"):
            names = [n.value for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                     if isinstance(n, ast.Constant) and isinstance(n.value, str)
                     and re.fullmatch(r"\s*graphrt\.frontends(\.\w+)*(:\w+)?\s*", n.value)]
            assert names == [], f"{module}: expected no frontend module named in code, found {names}"


def test_the_passes_import_no_kernels_and_the_kernels_no_passes() -> None:
    graph = import_graph()
    crossing = [(m, t) for m, t in graph.edges
                if {_layer(m), _layer(t)} == {"graphrt.passes", "graphrt.cuda_kernels"}]
    assert crossing == []


def test_import_graphrt_pulls_in_no_numba_cuda_frontends_or_optional_packages() -> None:
    """``import graphrt`` (and ``graphrt.testing``) adds the core's own modules to what torch, networkx and
    numpy import: no numba, no cuda-python module torch did not load, no hypothesis, no optional package,
    no module of the other layers."""
    code = ("import sys, torch, networkx, numpy\n"  # what the core may import (torch imports cuda.bindings itself)
            "before = set(sys.modules)\n"
            "import graphrt, graphrt.testing\n"
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before}))\n"
            "print(sorted(m for m in sys.modules if m.startswith('graphrt.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    top, ours = (eval(line) for line in out.stdout.strip().splitlines())  # noqa: S307  (our own printout)
    for package in ("numba", "cuda", "hypothesis", "matplotlib", "transformers", "fastapi", "uvicorn"):
        assert package not in top, f"import graphrt: expected no {package}, found it imported"
    layers = sorted({_layer(m) for m in ours})
    assert layers == ["graphrt"], f"import graphrt: expected the core only, found modules of {layers}"


def test_no_file_over_800_lines() -> None:
    files = [p for folder in (*LAYERS, "tests", "bench", "examples") for p in (ROOT / folder).rglob("*.py")]
    long = {str(p.relative_to(ROOT)): n for p in files
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"expected every file under {MAX_LINES} lines, found {long}"


def test_one_reference_per_op_and_every_implementation_on_its_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    import graphrt.cuda_kernels  # noqa: F401  (the kernels register themselves)
    from graphrt import registry, sampling
    from graphrt.cuda_kernels.argmax_confidence import confidence_reference
    from graphrt.cuda_kernels.denoise_select import denoise_select_reference
    from graphrt.cuda_kernels.sample import sample_reference
    from graphrt.cuda_kernels.verify_accept import verify_accept_reference

    for op in ("sample", "confidence", "denoise_select", "verify_accept"):  # registered as is: no wrapper
        assert registry.get_op(op).reference is getattr(sampling, op)
    for name, op in registry.all_ops().items():
        assert (op.reference is None) == (op.tier == "control"), name
        assert set(op.kernels) <= {"cuda", "cpu"}, name
    # the kernels' batched references loop over the registry's reference: replace it, they follow
    calls: list[str] = []
    for op in ("sample", "confidence", "denoise_select", "verify_accept"):
        entry = registry.get_op(op)

        def spy(*args, _ref=entry.reference, _op=op, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(_op)
            return _ref(*args, **kwargs)

        monkeypatch.setitem(registry._OPS, op, replace(entry, reference=spy))
    logits, block = torch.randn(2, 3, 5), torch.tensor([[4, 0, 0], [1, 4, 4]])
    sample_reference(logits, torch.arange(6).reshape(2, 3), seed=1, temperature=0.5)
    confidence_reference(logits, torch.zeros(2, 3, dtype=torch.int64))
    denoise_select_reference(block.clone(), block, torch.rand(2, 3, dtype=torch.float64), mask_token_id=4,
                             threshold=0.5)
    verify_accept_reference(block, block, start=0)
    assert sorted(set(calls)) == ["confidence", "denoise_select", "sample", "verify_accept"]
