"""Every ```python block of the README and the documentation site runs on its own (imports and
data included, in a fresh namespace and an empty folder) and prints what the page shows: the
comment lines right after a line that prints are its expected output, one printed line each.

Every block runs; the Dask one on an in-process LocalCluster.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LIBRARIES = (
    "keras",
    "torch",
    "onnx",
    "onnxruntime",
    "transformers",
    "zarr",
    "sklearn",
    "matplotlib",
    "dask",
    "flax",
)


def _blocks() -> list[tuple[str, int, str]]:
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
            out.append((page.relative_to(ROOT).as_posix(), text[: m.start()].count("\n") + 1, m.group(1)))
    return out


def _expected(code: str) -> list[str]:
    lines = code.splitlines()
    shown: list[str] = []
    for k, line in enumerate(lines):
        if "print(" not in line:
            continue
        for follow in lines[k + 1 :]:
            if not follow.startswith("# "):
                break
            shown.append(follow[2:])
    return shown


@pytest.mark.parametrize(("page", "line", "code"), _blocks(), ids=lambda v: str(v)[:40])
def test_example_runs_and_prints_what_it_shows(
    page: str, line: int, code: str, tmp_path, monkeypatch
) -> None:
    for lib in LIBRARIES:
        imported = re.search(rf"^\s*(import|from)\s+{lib}\b|import [^\n]*\b{lib}\b", code, flags=re.M)
        if imported and importlib.util.find_spec(lib) is None:
            pytest.skip(f"{lib} is not installed")
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"{page}:{line}", "exec"), {"__name__": "__docs__"})
    printed = [p.rstrip() for p in out.getvalue().splitlines()]
    for expected in _expected(code):
        assert expected.rstrip() in printed, f"{page}:{line} shows {expected!r}; it printed {printed}"


def test_there_are_examples() -> None:
    pages = {page for page, _, _ in _blocks()}
    assert "README.md" in pages and len(_blocks()) >= 5
