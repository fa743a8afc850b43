"""A self-contained HTML report: text coloured by a unit's activation (one line per unit, in
the style of Karpathy et al. 2015), a unit × time heatmap and a PCA trajectory, with the
pictures embedded, so the file can be mailed or opened offline."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .plots import _pyplot, heatmap, pca_trajectory

__all__ = ["html_report"]


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


#: the strongest tint: black text on the darkest blue, rgb(102, 102, 255), keeps a contrast
#: ratio of 4.9:1 (WCAG AA asks 4.5:1); full blue would be 2.4:1
_MAX_TINT = 0.6


def _colour(value: float, scale: float) -> str:
    """Red for positive, blue for negative activation, white at zero.

    >>> _colour(1.0, 1.0), _colour(-1.0, 1.0), _colour(0.0, 1.0)
    ('rgb(255,102,102)', 'rgb(102,102,255)', 'rgb(255,255,255)')
    """
    if not np.isfinite(value):
        return "#eeeeee"
    a = _MAX_TINT * max(-1.0, min(1.0, value / scale)) if scale else 0.0
    r, g, b = (
        (255, round(255 * (1 - a)), round(255 * (1 - a))) if a >= 0 else (round(255 * (1 + a)),) * 2 + (255,)
    )
    return f"rgb({r},{g},{b})"


def _coloured_text(text: str, values: np.ndarray) -> str:
    scale = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    spans = [
        f'<span style="background:{_colour(float(v), scale)}" title="{v:+.3f}">{html.escape(ch)}</span>'
        for ch, v in zip(text, values)
    ]
    return "".join(spans)


def html_report(
    path: str | os.PathLike[str],
    layer: Any,
    *,
    texts: Sequence[str],
    units: Sequence[tuple[str, int, float]],
    title: str = "rnnlens report",
    notes: str = "",
    samples: Sequence[int] = (0, 1, 2),
    results: Sequence[tuple[str, Sequence[tuple[str, str]]]] = (),
) -> str:
    """Write the report for ``layer`` (a :class:`~rnnlens.LayerStates`) and return its path.

    ``texts`` are the traced character sequences (one character per step), ``units`` the
    (field, unit, score) triples to show, best first. ``results``: further findings, shown as
    tables after the notes, each ``(heading, [(what, value), ...])`` (the demo's probe and
    ablation numbers).
    """
    rows = []
    for field, unit, score in units:
        values = np.asarray(getattr(layer, field)[:, :, unit])
        lines = "<br>".join(_coloured_text(texts[s], values[s]) for s in samples if s < len(texts))
        rows.append(
            f"<h3>{html.escape(layer.name)}.{field}[{unit}] &nbsp; r = {score:+.3f}</h3>"
            f'<div class="text">{lines}</div>'
        )
    tables = "".join(
        f"<h2>{html.escape(heading)}</h2><table>"
        + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        + "</table>"
        for heading, rows in results
    )
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    heatmap(layer, samples[0], field="h", tokens=list(texts[samples[0]]), ax=ax)
    heat = _png(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    pca_trajectory(layer, samples[0], ax=ax)
    pca = _png(fig)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#111;background:#fff}}
.text{{font-family:monospace;font-size:15px;line-height:1.6;white-space:pre;color:#000}}
table{{border-collapse:collapse}}th,td{{padding:2px 12px 2px 0;text-align:left}}
td{{font-family:monospace}}th{{font-weight:normal}}
img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1><p>{html.escape(notes)}</p>
{tables}
<h2>Units, coloured over held-out text (red positive, blue negative)</h2>
{"".join(rows)}
<h2>Heatmap: every unit of h, sample {samples[0]}</h2>
<img alt="heatmap" src="data:image/png;base64,{heat}">
<h2>PCA trajectory of h</h2><img alt="pca" src="data:image/png;base64,{pca}">
</body></html>
"""
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return os.fspath(path)
