"""The layout the adapter contract promises, checked on the source: no import cycle between
rnnlens' modules, no framework imported outside ``adapters/`` (and the test helpers and demo
that are about one framework), and no module over the size that keeps it one concern."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "rnnlens"
FRAMEWORKS = {"keras", "tf_keras", "tensorflow", "torch", "onnx", "onnxruntime", "jax"}
# outside adapters/, only these are about one framework by design
FRAMEWORK_FILES = {"demo.py", "testing/torch_models.py"}
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _top_level_imports(module: str, path: Path, known: set[str]) -> set[str]:
    """rnnlens modules imported when ``module`` is imported (not those imported in functions)."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node)
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if sub in known else target)
    return {m for m in out if m in known and m != module}


def test_no_import_cycle() -> None:
    mods = _modules()
    graph = {m: _top_level_imports(m, p, set(mods)) for m, p in mods.items()}
    # a package's __init__ is imported before its submodules: an edge parent -> child is implied
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n]
                # importing a submodule of one's own package from its __init__ is not a cycle
                pairs = itertools.pairwise(cycle)
                if not all(b.startswith(a + ".") or a.startswith(b + ".") for a, b in pairs):
                    raise AssertionError("import cycle: " + " -> ".join(cycle))
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_frameworks_only_in_adapters() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("adapters/") or rel in FRAMEWORK_FILES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            offenders += [f"{rel}:{node.lineno} {n}" for n in names if n.split(".")[0] in FRAMEWORKS]
    assert not offenders, offenders


def test_modules_are_small() -> None:
    big = {
        path.relative_to(SRC).as_posix(): n
        for path in SRC.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not big, big


def test_importing_rnnlens_imports_no_framework() -> None:
    import subprocess
    import sys

    code = "import sys, rnnlens, rnnlens.adapters as a; a.registered(); " + (
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FRAMEWORKS)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
