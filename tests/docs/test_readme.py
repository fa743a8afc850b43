"""The README's Python examples (```python blocks; ```py ones need files) run, and print what
the README says they print."""

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


def test_readme_examples_run_and_print_the_table_they_show() -> None:
    blocks = _python_blocks()
    block = blocks[0]
    out = io.StringIO()
    namespace: dict[str, object] = {}
    with contextlib.redirect_stdout(out):
        for code in blocks:  # later examples use the names the first one made
            exec(compile(code, str(README), "exec"), namespace)
    printed = out.getvalue().splitlines()
    shown = [line[2:] for line in block.splitlines() if line.startswith(("# States", "# layer", "# bilstm"))]
    assert shown, "the README should show the printed table"
    for line in shown:
        assert line in printed, f"README shows {line!r}, trace printed {printed}"
