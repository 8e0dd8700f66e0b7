"""The codebase's shape: no import cycle within distill/, export/ or bench/ (lazy imports included), export/ and bench/
use only distill's public names, and every module says in its first line what it owns.

Run: pytest tests/test_shape.py
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every import in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def package_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (lazy imports included)."""
    graph = {}
    for f in sorted((REPO / package).glob("*.py")):
        me = f"{package}.{f.stem}"
        deps = set()
        for module, names in imports(f):
            if module == package:
                deps |= {f"{package}.{n}" for n in names}
            elif module.startswith(package + "."):
                deps.add(module)
        graph[me] = deps - {me}
    return graph


@pytest.mark.parametrize("package", ["distill", "export", "bench"])
def test_no_import_cycle_within_a_package(package):
    graph = package_graph(package)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join(path + [node, dep])
            if dep not in state:
                visit(dep, path + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_export_and_bench_use_only_public_distill_names():
    for f in sorted([*(REPO / "export").glob("*.py"), *(REPO / "bench").glob("*.py")]):
        for module, names in imports(f):
            assert module != "distill.cli", f"{f.name} imports distill.cli"
            assert not any(n.startswith("_") for n in names if module.startswith("distill")), f"{f.name}: {module} {names}"


def test_distill_never_imports_export_or_bench():
    for f in sorted((REPO / "distill").glob("*.py")):
        assert not any(m.split(".")[0] in ("export", "bench") for m, _ in imports(f)), f"{f.name}: data flows one way"


def test_every_module_starts_with_a_docstring():
    for f in sorted([*(REPO / "distill").glob("*.py"), *(REPO / "export").glob("*.py"), *(REPO / "bench").glob("*.py")]):
        if f.name == "__init__.py":
            continue
        doc = ast.get_docstring(ast.parse(f.read_text()))
        assert doc and doc.strip(), f"{f.relative_to(REPO)} has no module docstring saying what it owns"
        first = doc.split("\n")[0]
        assert first.endswith((".", ":", "`")) and len(first) <= 120, f"{f.relative_to(REPO)}: one summary line first"


def test_the_student_module_does_not_import_torch():
    """What export and bench need of the student (prompt format, option matching) loads without torch."""
    import subprocess
    import sys

    code = "import sys, distill.student, distill.layout, distill.progress; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "False"
