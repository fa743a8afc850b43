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


def test_sigmoid_gates_on_a_0_1_sequential_scale_tanh_and_states_diverging(states) -> None:  # type: ignore[no-untyped-def]
    from rnnlens.viz.plots import GATE_CMAP

    fig = gate_grid(states["lstm"], 1)
    scales = {}
    for ax in fig.axes:
        if ax.images:
            image = ax.images[0]
            scales[ax.get_title()] = (image.get_cmap().name, *image.get_clim())
    for gate in "ifo":  # sigmoid gates: values in [0, 1]
        assert scales[gate] == (GATE_CMAP, 0.0, 1.0)
    for field in ("g", "c"):  # tanh gate and cell state: diverging, centred on zero
        name, lo, hi = scales[field]
        assert name == "RdBu_r" and lo == -hi and hi > 0
    # every heatmap has its colour bar (an extra axes beside each image)
    assert len(fig.axes) == 2 * len(scales)


def test_every_character_of_a_saved_figure_has_a_glyph(states, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """ "PC 2" and the minus signs of negative ticks are drawn by a font that has them."""
    from matplotlib import font_manager, ft2font

    ax = pca_trajectory(states["lstm"], 0)
    fig = ax.figure
    fig.savefig(tmp_path / "pca.png")
    fig.canvas.draw()
    texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_fontproperties"))]
    shown = [t for t in texts if t.get_text() and t.get_visible()]
    labels = {t.get_text() for t in shown}
    assert "PC 2" in labels and any(s.startswith(("\u2212", "-")) for s in labels)
    for t in shown:
        font = ft2font.FT2Font(font_manager.findfont(t.get_fontproperties()))
        missing = [ch for ch in t.get_text() if not ch.isspace() and font.get_char_index(ord(ch)) == 0]
        assert not missing, (t.get_text(), missing)


def test_a_font_without_the_minus_glyph_falls_back_to_hyphen_minus(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import matplotlib
    from matplotlib import ft2font

    from rnnlens.viz import plots

    class NoMinus:
        def __init__(self, path: str) -> None:
            pass

        def get_char_index(self, code: int) -> int:
            return 0 if code == 0x2212 else 1

    monkeypatch.setattr(ft2font, "FT2Font", NoMinus)
    with matplotlib.rc_context({"axes.unicode_minus": True}):
        plots._pyplot()
        assert matplotlib.rcParams["axes.unicode_minus"] is False
