"""Notebook views (``_repr_html_``) of States, LayerStates, interventions and ablation scans:
the same table as ``repr`` and, per layer, a small heatmap of the first sample's ``h``
(unit × time, inline SVG: no plotting library needed, and it stays small in a saved notebook)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["heatmap_svg", "table_html"]

_MAX_UNITS, _MAX_STEPS = 48, 120


def table_html(header: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "") -> str:
    cap = f"<caption style='text-align:left'>{html.escape(caption)}</caption>" if caption else ""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def heatmap_svg(values: np.ndarray, *, cell: int = 4, title: str = "") -> str:
    """(unit, time) values as an SVG grid, blue (negative) to red (positive), NaN grey;
    at most 48 units × 120 steps (the first ones)."""
    v = np.asarray(values, dtype=np.float64)[:_MAX_UNITS, :_MAX_STEPS]
    if v.size == 0:
        return ""
    finite = v[np.isfinite(v)]
    lim = float(np.abs(finite).max()) if finite.size else 1.0
    lim = lim or 1.0
    rects = []
    for u, row in enumerate(v):
        for t, x in enumerate(row):
            if not np.isfinite(x):
                color = "#bbbbbb"
            else:
                a = min(abs(x) / lim, 1.0)
                shade = int(255 * (1 - a))
                color = f"rgb(255,{shade},{shade})" if x > 0 else f"rgb({shade},{shade},255)"
            rects.append(
                f"<rect x='{t * cell}' y='{u * cell}' width='{cell}' height='{cell}' fill='{color}'/>"
            )
    w, h = v.shape[1] * cell, v.shape[0] * cell
    label = f"<title>{html.escape(title)}</title>" if title else ""
    return f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}'>{label}{''.join(rects)}</svg>"


def layer_html(ls: Any) -> str:
    """One layer: its row of the table and the heatmap of sample 0's h (first direction)."""
    first = ls.directions[next(iter(ls.directions))]
    # one sample, read (a stored layer is read lazily); a feature map flattens to units
    h = np.asarray(first.h[0]).reshape(first.h.shape[1], -1).T if first.h.shape[0] else np.zeros((0, 0))
    svg = heatmap_svg(h, title=f"{ls.name}: h of sample 0 (unit × time)")
    shape = "×".join(str(d) for d in ls.shape)
    row = (ls.name, ls.kind, ls.units, "+".join(ls.directions), ",".join(ls.fields), shape)
    table = table_html(("layer", "kind", "units", "directions", "fields", "shape"), [row])
    return f"<div>{table}<div style='margin:4px 0 12px 0'>{svg}</div></div>"


def states_html(states: Any) -> str:
    if states.mask is None:
        masked = "none"
    elif hasattr(states, "lengths"):  # a store: its lengths, not its whole mask
        n, t = (int(s) for s in states.mask.shape)
        masked = f"{n * t - int(np.asarray(states.lengths[...], dtype=np.int64).sum())} masked steps"
    else:
        masked = f"{int((~np.asarray(states.mask)).sum())} masked steps"
    head = (
        f"<p><b>States</b> ({len(states)} layers, mask: {masked}; backend {html.escape(states.backend)})</p>"
    )
    return head + "".join(layer_html(states[name]) for name in states)
