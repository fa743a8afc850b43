"""The HTML report in a real headless browser: it shows the findings it was given (the demo's
probe and ablation tables), and every text meets WCAG AA contrast, coloured text included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_viewer_browser import browser  # noqa: F401  (the fixture)

import rnnlens
from rnnlens.viz import html_report

keras = pytest.importorskip("keras")
pytest.importorskip("matplotlib")


def test_report_shows_findings_and_meets_aa_contrast(browser: Any, tmp_path: Path) -> None:  # noqa: F811
    from contrast import below_aa, text_contrast

    keras.utils.set_random_seed(0)
    inp = keras.Input((None,), dtype="int32")
    h = keras.layers.Embedding(6, 4)(inp)
    h = keras.layers.LSTM(5, return_sequences=True, name="lstm")(h)
    model = keras.Model(inp, h)
    texts = ["(()(()))", "()((()))"]
    x = np.array([[1 + "()".index(ch) for ch in t] for t in texts])
    states = rnnlens.trace(model, x)  # each line is scaled to its own max |value|: full tints
    results = [
        ("A probe", [("held-out accuracy", "0.912"), ("control task", "0.301")]),
        ("Ablation", [("intact model", "0.850"), ("3 top units ablated", "0.410")]),
    ]
    path = html_report(
        tmp_path / "r.html",
        states["lstm"],
        texts=texts,
        units=[("h", 0, 0.9), ("c", 1, -0.8)],
        samples=(0, 1),
        results=results,
    )
    page = browser.new_page()
    page.goto(Path(path).as_uri())
    body = page.inner_text("body")
    for heading, rows in results:
        assert heading in body
        for what, value in rows:
            assert what in body and value in body
    measured = text_contrast(page)
    assert sum(e["tag"] == "SPAN" for e in measured) >= sum(map(len, texts)) * 2
    assert below_aa(page) == []
    page.close()
