"""One picture of one sample from a store or an in-memory States: what ``rnnlens plot`` draws.

Example:
    >>> import keras, numpy as np, rnnlens
    >>> from rnnlens.viz.render import render
    >>> model = keras.Sequential([keras.Input((5, 2)), keras.layers.GRU(3, name="gru")])
    >>> states = rnnlens.trace(model, np.ones((2, 5, 2), "float32"))
    >>> fig = render(states, layer="gru", sample=1, kind="heatmap")
    >>> fig.axes[0].images[0].get_array().shape  # unit × time
    (3, 5)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ..analysis.decompose import decompose
from ..errors import FieldNotAvailableError, InputError
from ..io.stored import reading
from ..io.zarr import open_states
from ..viewer.store import Tokens
from .plots import _pyplot, decomposition_map, gate_grid, heatmap, pca_trajectory, unit_traces

__all__ = ["KINDS", "read_tokens", "render", "save"]

KINDS = ("heatmap", "traces", "pca", "gates", "decompose")
Kind = Literal["heatmap", "traces", "pca", "gates", "decompose"]


def read_tokens(path: str | os.PathLike[str], sample: int, length: int, *, chars: bool = False) -> list[str]:
    """Tokens of ``sample`` from a tokens file (line ``sample``; whitespace-separated, or one
    token per character with ``chars``), padded with ``""`` to ``length`` steps."""
    tokens = Tokens(path, chars=chars)
    if sample >= len(tokens):
        raise InputError(
            f"The tokens file {path} has {len(tokens)} line(s); sample {sample} needs line {sample + 1}. "
            "Pass a file with one line per sequence."
        )
    line = tokens.get(sample)
    if len(line) > length:
        raise InputError(
            f"Line {sample + 1} of {path} has {len(line)} tokens, more than the {length} steps of sample "
            f"{sample}. Tokens are separated by whitespace (or use --chars for one per character)."
        )
    return line + [""] * (length - len(line))


def _open(states: Any) -> Any:
    if isinstance(states, (str, os.PathLike)):
        return open_states(states)
    return states


def render(
    states: Any,
    *,
    layer: str,
    sample: int,
    kind: Kind | str = "heatmap",
    field: str | None = "h",
    direction: str | None = None,
    units: Sequence[int] | None = None,
    tokens: Sequence[str] | None = None,
    fit_samples: int | None = 2048,
) -> Any:
    """Draw one sample of one layer and return the matplotlib figure.

    ``states``: a :class:`~rnnlens.States`, a stored one, or a store path (opened lazily: only
    the chosen sample is read, plus the first ``fit_samples`` samples for ``kind="pca"``).
    ``field``: ``h``, ``c`` or a gate name; ``kind="gates"`` draws every gate (and ``c``);
    ``kind="decompose"`` the time × time map of :func:`rnnlens.decompose` (``field`` None: the
    layer's linear state, c or h; ``units``: the norm over those units).
    ``direction``: one direction of a bidirectional layer (default: both, joined along unit).
    ``units``: the units to draw (default: all; ``traces``: the first eight).
    """
    if kind not in KINDS:
        raise InputError(f"kind must be one of {list(KINDS)}; received {kind!r}.")
    opened = _open(states)
    with reading(getattr(opened, "path", "the store")):
        return _render(opened, layer, sample, kind, field, direction, units, tokens, fit_samples)


def _render(
    opened: Any,
    layer: str,
    sample: int,
    kind: str,
    field: str | None,
    direction: str | None,
    units: Sequence[int] | None,
    tokens: Sequence[str] | None,
    fit_samples: int | None,
) -> Any:
    ls = opened[layer]  # LayerNotFoundError with a suggestion
    if kind == "decompose":
        dec = decompose(opened, layer, field=field, direction=direction, chunk=1)
        return decomposition_map(dec, sample, units=units, tokens=tokens).figure
    field = field or "h"
    target = ls if direction is None else ls._direction(direction)
    n = int(ls.h.shape[0])
    if not 0 <= sample < n:
        raise InputError(f"sample {sample} is out of range: {layer!r} holds {n} sequence(s) (0..{n - 1}).")
    if field not in ("h", "c") and kind != "gates":
        if "gates" not in ls.fields:
            raise FieldNotAvailableError(
                f"Layer {layer!r} has no gates stored (fields: {', '.join(ls.fields)}); "
                "extract with --fields h,c,gates."
            )
        names = list(target.gates)
        if field not in names:
            raise FieldNotAvailableError(f"{field!r} is not a gate of {layer!r}; its gates are {names}.")
    elif field == "c" and "c" not in ls.fields:
        raise FieldNotAvailableError(f"Layer {layer!r} has no c stored (fields: {', '.join(ls.fields)}).")
    if units is not None:
        width = int(target.h.shape[-1]) if field == "h" or kind == "gates" else int(ls.spec.units)
        if kind != "gates" and field == "c" and ls.spec.cell_units:
            width = int(ls.spec.cell_units) * len(ls.directions if direction is None else [direction])
        bad = [u for u in units if not 0 <= u < width]
        if bad:
            raise InputError(
                f"Unit(s) {bad} out of range: {layer!r} has {width} unit(s) here (0..{width - 1})."
            )
    if kind == "gates":
        return gate_grid(target, sample, units=units)
    if kind == "pca":
        if field not in ("h", "c"):
            raise InputError("kind='pca' draws h or c; pass field='h' or 'c'.")
        ax = pca_trajectory(target, sample, field=field, fit_samples=fit_samples)
        ax.set_title(f"{layer} {field}, sample {sample}")
        return ax.figure
    if kind == "traces":
        arr = target.h if field == "h" else target.c if field == "c" else target.gates[field]
        width = int(arr.shape[-1])
        chosen = list(units) if units is not None else list(range(min(8, width)))
        ax = unit_traces(target, sample, chosen, field=field, tokens=tokens)
        ax.set_title(f"{layer} {field}, sample {sample}")
        return ax.figure
    ax = heatmap(target, sample, field=field, units=units, tokens=tokens)
    ax.set_title(f"{layer} {field}{'' if direction is None else ' ' + direction}, sample {sample}")
    return ax.figure


def save(fig: Any, out: str | os.PathLike[str], *, dpi: int = 100) -> Path:
    """Write ``fig`` (format from the suffix: .png, .svg, .pdf) and close it."""
    path = Path(out)
    formats = fig.canvas.get_supported_filetypes()
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in formats:
        _pyplot().close(fig)
        raise InputError(
            f"Cannot write {path.name!r}: the image format comes from the suffix, one of "
            f"{', '.join('.' + f for f in sorted(formats))} (e.g. plot.png, plot.svg, plot.pdf)."
        )
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    return path
