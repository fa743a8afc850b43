"""Plots as functions: heatmap (unit × time), unit traces, PCA trajectory, gate small multiples,
the decomposition map (which earlier steps a state holds).

Example:
    >>> import keras, numpy as np, rnnlens
    >>> from rnnlens.viz import heatmap
    >>> model = keras.Sequential([keras.Input((6, 2)), keras.layers.LSTM(4, name="lstm")])
    >>> states = rnnlens.trace(model, np.ones((1, 6, 2), "float32"))
    >>> ax = heatmap(states["lstm"], sample=0, tokens=list("abcdef"))
    >>> ax.get_ylabel()
    'unit'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core.optional import require
from ..errors import InputError

__all__ = ["GATE_CMAP", "decomposition_map", "gate_grid", "heatmap", "pca_trajectory", "unit_traces"]


def _pyplot() -> Any:
    matplotlib = require("matplotlib", purpose="Plots")
    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        import os

        if not os.environ.get("DISPLAY"):
            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _minus_sign(matplotlib)
    return plt


def _minus_sign(matplotlib: Any) -> None:
    """Negative tick labels use U+2212 (MINUS SIGN) by default; a configured font without that
    glyph draws an empty box or nothing, so then they fall back to the ASCII hyphen-minus."""
    if not matplotlib.rcParams["axes.unicode_minus"]:
        return
    from matplotlib import font_manager, ft2font

    try:
        path = font_manager.findfont(font_manager.FontProperties(), fallback_to_default=True)
        if ft2font.FT2Font(path).get_char_index(0x2212) == 0:
            matplotlib.rcParams["axes.unicode_minus"] = False
    except (OSError, RuntimeError, ValueError):  # an unreadable font file: leave the setting
        pass


#: a gate whose values all lie in [0, 1] (a sigmoid gate: i, f, o; z, r) is drawn on this
#: sequential scale from 0 to 1; h, c and tanh gates (g, n) on the zero-centred diverging one
GATE_CMAP = "viridis"


def _scale(field: str, values: np.ndarray, cmap: str | None) -> tuple[str, float, float]:
    """Colour map and limits: 0–1 sequential for a gate in [0, 1], else symmetric diverging."""
    finite = values[np.isfinite(values)]
    if field not in ("h", "c") and finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
        return cmap or GATE_CMAP, 0.0, 1.0
    lim = float(np.abs(finite).max()) if finite.size else 1.0
    return cmap or "RdBu_r", -(lim or 1.0), lim or 1.0


def _field(states: Any, field: str, sample: int) -> np.ndarray:
    arr = getattr(states, field) if field in ("h", "c") else states.gates[field]
    n = arr.shape[0]
    if not -n <= sample < n:
        raise InputError(f"sample {sample} is out of range: the states hold {n} sequence(s).")
    return np.asarray(arr[sample], dtype=np.float64)


def _mask(states: Any, sample: int, length: int) -> np.ndarray:
    mask = getattr(states, "mask", None)
    return np.ones(length, bool) if mask is None else np.asarray(mask[sample], bool)


def _time_axis(ax: Any, tokens: Sequence[str] | None, length: int) -> None:
    if tokens is not None:
        if len(tokens) != length:
            raise InputError(f"{len(tokens)} tokens for a sequence of {length} steps; pass one per step.")
        ax.set_xticks(range(length))
        ax.set_xticklabels(
            list(tokens), fontsize=8, rotation=0 if max(map(len, tokens), default=1) <= 2 else 90
        )
    ax.set_xlabel("time")


def heatmap(
    states: Any,
    sample: int = 0,
    *,
    field: str = "h",
    units: Sequence[int] | None = None,
    tokens: Sequence[str] | None = None,
    ax: Any = None,
    cmap: str | None = None,
) -> Any:
    """Unit × time image of one sample's ``field`` (``h``, ``c`` or a gate name), with its colour
    bar; masked steps hatched. Default colours: a gate with values in [0, 1] on a sequential
    0–1 scale (:data:`GATE_CMAP`), anything else on a diverging scale centred on zero."""
    plt = _pyplot()
    values = _field(states, field, sample)  # (time, unit)
    if units is not None:
        values = values[:, list(units)]
    mask = _mask(states, sample, values.shape[0])
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, values.shape[0] * 0.25), max(2.5, values.shape[1] * 0.12)))
    colours, lo, hi = _scale(field, values, cmap)
    image = ax.imshow(values.T, aspect="auto", cmap=colours, vmin=lo, vmax=hi, interpolation="nearest")
    for t in np.flatnonzero(~mask):
        ax.add_patch(
            plt.Rectangle((t - 0.5, -0.5), 1, values.shape[1], fill=False, hatch="///", lw=0, color="grey")
        )
    bar = ax.figure.colorbar(image, ax=ax, fraction=0.03)
    bar.set_label(field, fontsize=8)
    shown = list(units) if units is not None else list(range(values.shape[1]))
    step = max(1, len(shown) // 16)
    ax.set_yticks(range(0, len(shown), step))
    ax.set_yticklabels([str(u) for u in shown[::step]], fontsize=7)
    ax.set_ylabel("unit")
    ax.set_title(f"{getattr(states, 'name', '')} {field}, sample {sample}".strip())
    _time_axis(ax, tokens, values.shape[0])
    return ax


def unit_traces(
    states: Any,
    sample: int,
    units: Sequence[int],
    *,
    field: str = "h",
    tokens: Sequence[str] | None = None,
    ax: Any = None,
) -> Any:
    """One line per unit over time."""
    plt = _pyplot()
    values = _field(states, field, sample)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, values.shape[0] * 0.25), 3))
    for u in units:
        ax.plot(values[:, u], label=f"{field}[{u}]")
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.legend(fontsize=7, loc="upper right")
    _time_axis(ax, tokens, values.shape[0])
    return ax


def pca_trajectory(
    states: Any, sample: int = 0, *, field: str = "h", ax: Any = None, fit_samples: int | None = None
) -> Any:
    """One sample's path through the 2-D PCA plane fitted on every valid step of every sample
    (of the first ``fit_samples`` samples, when given: bounded reading on a large store)."""
    plt = _pyplot()
    full = getattr(states, field)
    n_all = int(full.shape[0])
    if not -n_all <= sample < n_all:
        raise InputError(f"sample {sample} is out of range: the states hold {n_all} sequence(s).")
    sample = sample % n_all
    n = n_all if fit_samples is None else max(1, min(int(fit_samples), n_all))
    arr = np.asarray(full[:n], dtype=np.float64)
    mask = getattr(states, "mask", None)
    valid = np.ones(arr.shape[:2], bool) if mask is None else np.asarray(mask[:n], bool)
    valid &= np.isfinite(arr).all(axis=-1)
    points = arr[valid]
    own = np.asarray(full[sample], dtype=np.float64)
    own_valid = np.ones(own.shape[0], bool) if mask is None else np.asarray(mask[sample], bool)
    own = own[own_valid & np.isfinite(own).all(axis=-1)]
    if sample >= n:  # fit on the chosen sample too
        points = np.concatenate([points, own])
    if len(points) < 2:
        raise InputError(
            f"PCA needs at least 2 valid steps; sample {sample} and its fit set have {len(points)}."
        )
    mean = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - mean, full_matrices=False)
    basis = vt[:2].T
    if basis.shape[1] < 2:  # one unit: a second, zero axis
        basis = np.pad(basis, ((0, 0), (0, 2 - basis.shape[1])))
    path = (own - mean) @ basis
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(*((points - mean) @ basis).T, s=2, color="lightgrey", label="all steps")
    ax.plot(path[:, 0], path[:, 1], "-o", ms=3, color="C3", label=f"sample {sample}")
    ax.annotate("start", path[0])
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=7)
    return ax


def gate_grid(states: Any, sample: int = 0, *, units: Sequence[int] | None = None) -> Any:
    """Small multiples: one heatmap per gate (and ``c`` where present). Returns the figure."""
    plt = _pyplot()
    names = list(states.gates)
    if "c" in getattr(states, "fields", ()):
        names.append("c")
    fig, axes = plt.subplots(len(names), 1, figsize=(6, 1.8 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        heatmap(states, sample, field=name, units=units, ax=ax)
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    return fig


def decomposition_map(
    dec: Any,
    sample: int = 0,
    *,
    units: Sequence[int] | None = None,
    tokens: Sequence[str] | None = None,
    ax: Any = None,
    cmap: str = "viridis",
) -> Any:
    """Time × time image of one sample's :class:`~rnnlens.Decomposition` (``rnnlens.decompose``):
    row t, column s is the norm of what step s wrote that the state at step t still holds (over
    ``units``, default all); reads that sample only."""
    plt = _pyplot()
    if not 0 <= sample < dec.n_samples:
        raise InputError(f"sample {sample} is out of range: the states hold {dec.n_samples} sequence(s).")
    values = dec.attention(samples=slice(sample, sample + 1), units=units)[0]
    t = values.shape[0]
    if ax is None:
        side = max(3.5, min(12.0, t * 0.25))
        _, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(values, cmap=cmap, vmin=0.0, interpolation="nearest", origin="upper")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, label="‖contribution‖")
    _time_axis(ax, tokens, t)
    if tokens is None:  # steps are integers
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("written at step s")
    if tokens is not None:
        ax.set_yticks(range(t))
        ax.set_yticklabels(list(tokens), fontsize=8)
    ax.set_ylabel("state at step t")
    which = "" if units is None else f" units {list(units)}"
    ax.set_title(f"{dec.layer} {dec.field}{which}: writes held, sample {sample}")
    return ax
