"""The import rules of docs/architecture.md, checked on every module of every package, and the
absence of capability probing in labpgt/."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sim", "drivers", "instruments", "labpgt")
#: the only labpgt modules that may import the simulator (docs/architecture.md)
LABPGT_MAY_IMPORT_SIM = {"labpgt/experiment/embedded.py", "labpgt/reservoirs/direct.py", "labpgt/cli.py"}
#: what each top-level package may import from the project
ALLOWED = {"sim": set(), "instruments": set(), "drivers": {"instruments"}, "labpgt": {"instruments", "sim"}}


def modules(package: str):
    return sorted((ROOT / package).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (absolute names; relative imports resolved), anywhere in the file."""
    tree = ast.parse(path.read_text(), str(path))
    rel = path.relative_to(ROOT).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            # "from labpgt.x import y" may import the submodule y
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def project_imports(path: Path) -> set[str]:
    return {m for m in imported_modules(path) if m.split(".")[0] in PACKAGES}


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_flow_one_way(package):
    bad = []
    for path in modules(package):
        rel = str(path.relative_to(ROOT))
        for name in project_imports(path):
            top = name.split(".")[0]
            if top == package:
                continue
            if top not in ALLOWED[package]:
                bad.append(f"{rel} imports {name}")
            elif package == "labpgt" and top == "sim" and rel not in LABPGT_MAY_IMPORT_SIM:
                bad.append(f"{rel} imports {name} (only {sorted(LABPGT_MAY_IMPORT_SIM)} may)")
    assert not bad, "\n".join(bad)


def _module_graph(package: str) -> dict[str, set[str]]:
    names = {}
    for path in modules(package):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        names[".".join(parts)] = path
    graph = {}
    for name, path in names.items():
        graph[name] = {m for m in project_imports(path) if m in names and m != name}
    return graph


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles(package):
    graph = _module_graph(package)
    # a package's __init__ re-exporting its own modules is not a cycle worth reporting
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".") and not m.startswith(name + ".")}
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_capabilities_are_declared_not_probed():
    """hasattr/getattr appear in labpgt/ only at the boundary cases listed in docs/architecture.md."""
    documented = set(re.findall(r"`(labpgt/[\w/]+\.py)`", (ROOT / "docs" / "architecture.md").read_text().split(
        "## Documented boundary cases")[1]))
    found = {}
    for path in modules("labpgt"):
        rel = str(path.relative_to(ROOT))
        hits = [i for i, line in enumerate(path.read_text().splitlines(), 1) if re.search(r"\bhasattr\(|\bgetattr\(", line)]
        if hits:
            found[rel] = hits
    undocumented = {rel: hits for rel, hits in found.items() if rel not in documented}
    assert not undocumented, f"hasattr/getattr outside the documented boundary cases: {undocumented}"


def test_no_print_in_library_code():
    """Library code logs; only the command line (and the progress bar it owns) prints."""
    # the commands' own output: labpgt, train/replay, watch, study (progress lines and summary)
    allowed = {"labpgt/cli.py", "labpgt/experiment/run.py", "labpgt/experiment/resumed.py", "labpgt/watch/cli.py",
               "labpgt/study/cli.py"}
    bad = []
    for path in modules("labpgt"):
        rel = str(path.relative_to(ROOT))
        if rel in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                bad.append(f"{rel}:{node.lineno}")
    assert not bad, bad


def test_modules_stay_small():
    """One concern a module, a few hundred lines at most (docs/architecture.md)."""
    big = {str(p.relative_to(ROOT)): n for p in modules("labpgt")
           if (n := len(p.read_text().splitlines())) > 600}
    assert not big, big
