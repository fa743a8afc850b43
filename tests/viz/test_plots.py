"""Plots and the HTML report draw real traced states (Agg backend, no screen)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rnnlens
from rnnlens.viz import gate_grid, heatmap, html_report, pca_trajectory, unit_traces

keras = pytest.importorskip("keras")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def states():  # type: ignore[no-untyped-def]
    inp = keras.Input((None,), dtype="int32")
    h = keras.layers.Embedding(6, 4, mask_zero=True)(inp)
    h = keras.layers.LSTM(5, return_sequences=True, name="lstm")(h)
    model = keras.Model(inp, h)
    x = np.array([[1, 2, 3, 4, 0, 0], [5, 4, 3, 2, 1, 1]])
    return rnnlens.trace(model, x)


def test_heatmap_hatches_masked_steps(states) -> None:  # type: ignore[no-untyped-def]
    ax = heatmap(states["lstm"], sample=0, tokens=list("abcd__"))
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 2  # the two padded steps
    assert [t.get_text() for t in ax.get_xticklabels()] == list("abcd__")
    assert ax.images[0].get_array().shape == (5, 6)  # unit × time


def test_gate_heatmap_traces_pca_and_grid(states) -> None:  # type: ignore[no-untyped-def]
    ax = heatmap(states["lstm"], 1, field="f", units=[0, 3])
    assert ax.images[0].get_array().shape == (2, 6)
    ax = unit_traces(states["lstm"], 1, [0, 1], field="c")
    assert len(ax.lines) == 3  # two units and the zero line
    ax = pca_trajectory(states["lstm"], 0)
    assert len(ax.lines[0].get_xdata()) == 4  # the valid steps of sample 0
    fig = gate_grid(states["lstm"], 0)
    assert len(fig.axes) >= 5  # i, f, g, o, c (+ colorbars)


def test_bad_sample_and_tokens(states) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(rnnlens.InputError, match="out of range"):
        heatmap(states["lstm"], sample=5)
    with pytest.raises(rnnlens.InputError, match="3 tokens for a sequence of 6"):
        heatmap(states["lstm"], sample=0, tokens=["a", "b", "c"])


def test_html_report_is_self_contained(states, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = html_report(
        tmp_path / "r.html", states["lstm"], texts=["abcd__", "edcbaa"], units=[("h", 2, 0.5)], samples=(0, 1)
    )
    page = Path(path).read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 2
    assert "lstm.h[2]" in page and page.count("<span") == 12
    assert "http" not in page  # nothing fetched from elsewhere
