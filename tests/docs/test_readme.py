"""The README's Python example runs, and prints what the README says it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

pytest.importorskip("keras")

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_example_runs_and_prints_the_table_it_shows() -> None:
    block = _python_blocks()[0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, str(README), "exec"), {})
    printed = out.getvalue().splitlines()
    shown = [line[2:] for line in block.splitlines() if line.startswith(("# States", "# layer", "# bilstm"))]
    assert shown, "the README should show the printed table"
    for line in shown:
        assert line in printed, f"README shows {line!r}, trace printed {printed}"
