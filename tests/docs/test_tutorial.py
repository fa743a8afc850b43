"""docs/tutorial.ipynb (trace, store, view, intervene, probe) runs top to bottom in a fresh
kernel, as a reader would run it."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).parents[2] / "docs" / "tutorial.ipynb"


def test_the_tutorial_notebook_runs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit it without outputs"
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in shown if o.get("output_type") == "error"]
    html = [o for o in shown if "text/html" in o.get("data", {})]
    assert html, "the States / LayerStates HTML views are shown"
    last = nb.cells[-1].outputs[0]["data"]["text/plain"]
    assert "selectivity" in last
