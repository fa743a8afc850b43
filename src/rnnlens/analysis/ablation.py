"""``rnnlens.ablation_scan``: the effect on a scalar metric of ablating each unit of a layer.

Units are ablated in groups along the sample axis: the input is repeated once per unit of a
group and each copy gets its own unit set to ``value`` (an ``scale``/``add`` pair of
:class:`rnnlens.Edit` whose arrays differ per copy), so a group costs one forward pass of
``group × samples`` samples, not one call per unit. The copies' outputs are split again along
the axis whose length grew, and ``metric`` sees each copy's outputs exactly as it would see
the model's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import adapters
from ..api.intervention import edited_outputs, intervene
from ..api.tracer import _opened
from ..core.buffers import empty
from ..core.edits import Edit
from ..core.html import heatmap_svg, table_html
from ..core.table import format_table
from ..errors import InputError, OptionError, OptionTypeError

__all__ = ["AblationScan", "ablation_scan"]


@dataclass
class AblationScan:
    """Effects of ablating single units: ``effect[u, s] = metric(ablated) - metric(baseline)``.

    Attributes:
        layer, field: what was ablated.
        units: the unit indices (rows).
        steps: the step labels (columns): ``"all"``, a range like ``"5:"`` or single steps.
        baseline: ``metric`` of the unablated run.
        values: ``metric`` of each ablated run, (unit, step).
    """

    layer: str
    field: str
    units: list[int]
    steps: list[str]
    baseline: float
    values: np.ndarray

    @property
    def effect(self) -> np.ndarray:
        return self.values - self.baseline

    def top(self, k: int = 5) -> list[int]:
        """The ``k`` units whose ablation changes the metric most (largest |effect| over steps)."""
        order = np.argsort(-np.abs(self.effect).max(axis=1), kind="stable")
        return [self.units[i] for i in order[:k]]

    def to_xarray(self) -> Any:
        """The effects as an ``xarray.DataArray`` with dims ``(unit, step)``."""
        import xarray as xr

        return xr.DataArray(
            self.effect,
            dims=("unit", "step"),
            coords={"unit": self.units, "step": self.steps},
            name="effect",
            attrs={"layer": self.layer, "field": self.field, "baseline": self.baseline},
        )

    def plot(self, ax: Any = None) -> Any:
        """A heatmap of the effects (unit × step); returns the matplotlib ``Axes``."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(
                figsize=(max(3.0, 0.5 * len(self.steps) + 2), max(2.5, 0.25 * len(self.units)))
            )
        lim = float(np.abs(self.effect).max()) or 1.0
        im = ax.imshow(self.effect, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_yticks(range(len(self.units)), [str(u) for u in self.units])
        ax.set_xticks(range(len(self.steps)), self.steps)
        ax.set_xlabel("steps ablated")
        ax.set_ylabel("unit")
        ax.set_title(f"{self.layer}.{self.field}: metric change when ablated")
        ax.figure.colorbar(im, ax=ax)
        return ax

    def _repr_html_(self) -> str:
        rows = [(u, *(f"{v:+.4g}" for v in row)) for u, row in zip(self.units, self.effect)]
        caption = f"AblationScan of {self.layer}.{self.field}: baseline {self.baseline:.6g}"
        return table_html(("unit", *self.steps), rows, caption) + heatmap_svg(self.effect, cell=10)

    def __repr__(self) -> str:
        rows = [(str(u), *(f"{v:+.4g}" for v in row)) for u, row in zip(self.units, self.effect)]
        head = f"AblationScan of {self.layer}.{self.field}: baseline {self.baseline:.6g}\n"
        return head + format_table(("unit", *self.steps), rows)


def ablation_scan(
    model: Any,
    x: Any,
    layer: str,
    metric: Callable[[Any], float],
    *,
    field: str = "h",
    units: Sequence[int] | None = None,
    steps: int | slice | Sequence[int] | None = None,
    value: float = 0.0,
    direction: str | None = None,
    group: int | None = None,
    sample_axis: int = 0,
) -> AblationScan:
    """Ablate each unit of ``layer`` in turn (set to ``value``) and measure ``metric(outputs)``.

    Args:
        model: as for :func:`rnnlens.intervene`.
        x: as for :func:`rnnlens.intervene`; one array (or tensor).
        sample_axis: ``x``'s sample axis (1 for a time-major ``nn.LSTM``); the copies of a
            group are stacked along it.
        layer: the layer to ablate.
        field: what to ablate (``field="c"`` for an LSTM's cell state).
        direction: which direction (``None``: every direction of the layer).
        metric: maps the model's outputs (as :attr:`Intervention.outputs`) to a number.
        units: the units to scan (default: all).
        steps: ``None``: ablate at every step (one column); a ``slice``: over that range (one
            column); an int or a list of ints: each step on its own (one column each).
        group: units ablated per forward pass (default: as many as keep a pass ≤ 4096 samples).

    Example:
        >>> import numpy as np, torch, rnnlens
        >>> torch.manual_seed(0) and None
        >>> lstm = torch.nn.LSTM(3, 4, batch_first=True)
        >>> x = np.random.default_rng(0).normal(size=(8, 6, 3)).astype("float32")
        >>> last_step_sum = lambda out: float(np.take(out[0], -1, axis=1).sum())
        >>> scan = rnnlens.ablation_scan(lstm, x, "lstm", last_step_sum)
        >>> scan.effect.shape, scan.steps
        ((4, 1), ['all'])
    """
    model = _opened(model)
    arr = np.asarray(x)
    if not -arr.ndim <= sample_axis < arr.ndim or arr.shape[sample_axis] == 0:
        raise InputError(
            f"x of shape {arr.shape} has no samples along sample_axis={sample_axis}; pass the axis "
            "that counts samples (0 for batch-first models, 1 for time-major ones)."
        )
    if not callable(metric):
        raise OptionTypeError("metric must be a function of the model's outputs returning a number")
    spec = next((s for s in adapters.for_model(model).describe(model) if s.name == layer), None)
    width = None if spec is None else int(spec.cell_units or spec.units) if field == "c" else int(spec.units)
    unit_list = list(range(width or 0)) if units is None else [int(u) for u in units]
    columns, labels = _columns(steps)
    n = arr.shape[sample_axis]
    g = group or max(1, min(len(unit_list) or 1, 4096 // n))
    if g < 1:
        raise OptionError(f"group must be ≥ 1; received {group}")
    noop = Edit(layer, slice(None), field=field, direction=direction, add=0.0)
    only = {"layers": [layer], "fields": ("h",)}  # the scan needs outputs; keep the states small
    base_out = intervene(model, arr, noop, **only).outputs  # also checks layer, field and direction
    baseline = _number(metric(base_out))
    if width is None or not unit_list:
        raise OptionError(f"No units to scan in {layer!r}")
    values = np.empty((len(unit_list), len(columns)))
    for j, col in enumerate(columns):
        for start in range(0, len(unit_list), g):
            chunk = unit_list[start : start + g]
            k = len(chunk)
            scale = np.ones((k * n, width))
            add = np.zeros((k * n, width))
            for r, u in enumerate(chunk):
                scale[r * n : (r + 1) * n, u] = 0.0
                add[r * n : (r + 1) * n, u] = value
            edits = [
                Edit(layer, col, field=field, direction=direction, scale=scale),
                Edit(layer, col, field=field, direction=direction, add=add),
            ]
            out = edited_outputs(model, _copies(arr, k, sample_axis), edits, layer)
            for r, piece in enumerate(_split(out, base_out, k)):
                values[start + r, j] = _number(metric(piece))
    return AblationScan(layer, field, unit_list, labels, baseline, values)


def _columns(steps: int | slice | Sequence[int] | None) -> tuple[list[int | slice], list[str]]:
    if steps is None:
        return [slice(None)], ["all"]
    if isinstance(steps, slice):
        text = f"{'' if steps.start is None else steps.start}:{'' if steps.stop is None else steps.stop}"
        return [steps], [text]
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        return [int(steps)], [str(int(steps))]
    try:
        cols = [int(s) for s in steps]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise OptionTypeError(
            f"steps must be None, an int, a slice or a list of ints; received {steps!r}"
        ) from None
    return list(cols), [str(s) for s in cols]


def _number(v: Any) -> float:
    try:
        out = float(np.asarray(v))
    except (TypeError, ValueError):
        raise OptionTypeError(f"metric must return one number; it returned {type(v).__name__}") from None
    return out


def _copies(arr: np.ndarray, k: int, axis: int) -> np.ndarray:
    """``k`` copies of ``arr`` stacked along ``axis``, in a reused buffer (:mod:`rnnlens.core.buffers`)."""
    shape = list(arr.shape)
    shape[axis] *= k
    return np.concatenate([arr] * k, axis=axis, out=empty(tuple(shape), arr.dtype))


def _split(out: Any, base: Any, k: int) -> list[Any]:
    """Cut the outputs of ``k`` stacked copies into ``k`` outputs shaped like ``base``."""
    if k == 1:
        return [out]
    if isinstance(out, np.ndarray):
        axes = [a for a in range(out.ndim) if out.shape[a] != base.shape[a]]
        if len(axes) != 1 or out.shape[axes[0]] != k * base.shape[axes[0]]:
            raise InputError(
                f"Cannot find the sample axis of an output of shape {base.shape} (copies: {out.shape})."
            )
        return np.split(out, k, axis=axes[0])
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        parts = [_split(o, b, k) for o, b in zip(out, base)]
        return [type(out)(*(p[i] for p in parts)) for i in range(k)]
    if isinstance(out, (tuple, list)):
        parts = [_split(o, b, k) for o, b in zip(out, base)]
        return [type(out)(p[i] for p in parts) for i in range(k)]
    if isinstance(out, dict):
        parts_d = {key: _split(out[key], base[key], k) for key in out}
        return [{key: parts_d[key][i] for key in out} for i in range(k)]
    return [out] * k
