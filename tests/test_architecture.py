"""The layout, checked on the source (docs/architecture.md explains it).

- No import cycle between rnnlens' modules, counting imports inside functions too (a deferred
  import is the same dependency, hidden) and the package ``__init__`` every import runs first;
  only ``if TYPE_CHECKING:`` imports are left out (they never run).
- The layers: each module imports only its own layer and the layers below it.
- Frameworks only in ``adapters/`` (and the demo and test helpers that are about one framework).
- No module over the size that keeps it one concern.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "rnnlens"
FRAMEWORKS = {"keras", "tf_keras", "tensorflow", "torch", "onnx", "onnxruntime", "jax", "flax"}
# outside adapters/, only these are about one framework by design
FRAMEWORK_FILES = {"cli/demo.py", "testing/torch_models.py"}
MAX_LINES = 500

#: bottom to top; a module may import its own layer and those before it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("rnnlens.core", "rnnlens.errors")),
    ("adapters", ("rnnlens.adapters",)),
    ("io", ("rnnlens.io",)),
    ("api", ("rnnlens.api",)),
    ("extract", ("rnnlens.extract", "rnnlens.distributed")),
    ("analysis", ("rnnlens.analysis",)),
    ("viewer", ("rnnlens.viewer",)),
    ("viz", ("rnnlens.viz",)),
    ("public", ("rnnlens",)),  # the package itself: the public API (rnnlens/__init__.py)
    ("cli", ("rnnlens.cli",)),  # clients of the public API
    ("testing", ("rnnlens.testing",)),
    ("main", ("rnnlens.__main__",)),
]
#: inside adapters/: the contract and registry, then each framework's package; one adapter may
#: build on another only where named here (transformers models are torch modules; TorchScript is
#: traced through its ONNX export)
ADAPTER_SHARED = ("rnnlens.adapters", "rnnlens.adapters.base", "rnnlens.adapters.calllog")
ADAPTER_USES = {"hf_": {"torch_"}, "torch_": {"onnx_"}}


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


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    return skip


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Every rnnlens module ``module`` imports, at the top or inside a function."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node)
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if sub in known else target)
    return {m for m in out if m in known and m != module}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph = {}
    for m, p in mods.items():
        direct = _imports(m, p, known)
        implied = set()
        for target in direct:  # importing a.b.c runs a.b's __init__ first (the root's always does)
            parts = target.split(".")
            implied |= {".".join(parts[:k]) for k in range(2, len(parts))}
        ancestors = {".".join(m.split(".")[:k]) for k in range(1, len(m.split(".")))}
        graph[m] = direct | {t for t in implied if t not in ancestors and t != m}
    return graph


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n]
                # a package's __init__ importing its own submodule is no cycle
                if not (len(cycle) == 2 and cycle[1].startswith(cycle[0] + ".")):
                    cycles.append(" -> ".join(cycle))
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _layer(module: str) -> int:
    best, rank = -1, -1
    for k, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), k
    return rank


def test_each_layer_imports_only_itself_and_below() -> None:
    offenders = [
        f"{m} ({LAYERS[_layer(m)][0]}) imports {n} ({LAYERS[_layer(n)][0]})"
        for m, targets in _graph().items()
        for n in _imports(m, _modules()[m], set(_modules()))
        if _layer(n) > _layer(m)
    ]
    assert not offenders, "\n".join(offenders)


def test_adapters_import_only_the_contract_core_and_themselves() -> None:
    mods = _modules()
    offenders = []
    for m, p in mods.items():
        parts = m.split(".")
        if len(parts) < 4 or parts[1] != "adapters":
            continue
        own = parts[2]
        for n in _imports(m, p, set(mods)):
            if not n.startswith("rnnlens.adapters"):
                continue
            other = n.split(".")[2] if n.count(".") >= 2 else None
            if n in ADAPTER_SHARED or other == own or other in ADAPTER_USES.get(own, set()):
                continue
            offenders.append(f"{m} imports {n}")
    assert not offenders, "\n".join(offenders)


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


def test_the_root_holds_only_the_public_face() -> None:
    """Every concern lives in a package; the root keeps the API, the errors and `-m rnnlens`."""
    root = sorted(p.name for p in SRC.glob("*.py"))
    assert root == ["__init__.py", "__main__.py", "distributed.py", "errors.py"], root


def test_importing_rnnlens_imports_no_framework() -> None:
    import subprocess
    import sys

    code = "import sys, rnnlens, rnnlens.adapters as a; a.registered(); " + (
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FRAMEWORKS)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


#: libraries whose import is deferred to first use (importing rnnlens stays cheap)
OPTIONAL_LIBRARIES = FRAMEWORKS | {
    "transformers",
    "zarr",
    "xarray",
    "h5py",
    "numcodecs",
    "fsspec",
    "s3fs",
    "sklearn",
    "matplotlib",
    "dask",
    "distributed",
    "onnxscript",
}


def _top_level(module: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(rnnlens modules, other top-level names) imported when ``module`` is imported."""
    tree = ast.parse(path.read_text())
    ours: set[str] = set()
    others: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                (ours if a.name in known else others).add(a.name)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node)
            if target.split(".")[0] != "rnnlens":
                others.add(target)
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                ours.add(sub if sub in known else target)
    return {m for m in ours if m in known and m != module}, {o.split(".")[0] for o in others}


def test_deferred_imports_only_defer_optional_libraries() -> None:
    """An rnnlens module is imported inside a function only when importing it would import a
    framework or an optional library (the cheap-import rule); otherwise at the top, in plain sight."""
    mods = _modules()
    known = set(mods)
    tops = {m: _top_level(m, p, known) for m, p in mods.items()}
    heavy: dict[str, bool] = {}

    def is_heavy(m: str, seen: frozenset[str] = frozenset()) -> bool:
        if m not in heavy:
            ours, others = tops[m]
            heavy[m] = bool(others & OPTIONAL_LIBRARIES) or any(
                is_heavy(n, seen | {m}) for n in ours if n not in seen
            )
        return heavy[m]

    offenders = []
    for m, p in mods.items():
        top_ours = tops[m][0]
        for n in _imports(m, p, known) - top_ours:
            if not is_heavy(n) and not any(t.startswith(n + ".") for t in top_ours):
                offenders.append(f"{m} defers {n}")
    assert not offenders, "\n".join(sorted(offenders))
