"""Where a unit's state at one step came from, for the viewer's click on a heatmap cell:
the exact decomposition (:func:`rnnlens.decompose`) of the layer's linear state into what each
earlier step wrote, for one sample, one step and one unit.

The decomposed field is the layer's linear one, whatever field the page shows: an LSTM's
``c`` (its ``h`` is ``o ⊙ tanh(c)``), a GRU's ``h``. A state-space mixer's state has rows of its
own (the rows of its ``state_norm`` heatmap, the state's norm over its last axis): a click there
colours each step by the part of the row's norm it wrote, the projection of its contribution on
the row's state, ``⟨contribution_s, x_t⟩ / ‖x_t‖`` — signed, and summing with the initial term's
to ``‖x_t‖`` exactly as the contributions sum to ``x_t``. Its ``h`` (the mixer's output) is not a
state, and other kinds are refused with the reason :func:`rnnlens.decompose` gives (a 400 whose
message the page shows).

Example:
    >>> import numpy as np, os, tempfile, torch, rnnlens
    >>> from rnnlens.viewer.store import StoreView
    >>> path = os.path.join(tempfile.mkdtemp(), "s.zarr")
    >>> gru = torch.nn.GRU(2, 3, batch_first=True)
    >>> _ = rnnlens.extract_to(path, gru, [torch.randn(2, 5, 2)], fields=("h", "gates"))
    >>> r = contribution(StoreView(path), "gru", "forward", sample=1, t=3, unit=2)
    >>> r["field"], len(r["values"]), r["steps"]
    ('h', 5, [0, 3])
    >>> bool(np.isclose(sum(r["values"][:4]) + r["initial"], r["total"], rtol=1e-5, atol=1e-7))
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..analysis.decompose import decompose
from ..errors import InputError
from .store import StoreView

__all__ = ["contribution"]


def contribution(
    view: StoreView, layer: str, direction: str, *, sample: int, t: int, unit: int, field: str = "h"
) -> dict[str, Any]:
    """Step ``s``'s signed contribution to ``unit`` of the layer's linear field at step ``t`` of
    ``sample``: ``values`` (one per step of the sequence; 0 for steps that come after ``t`` in
    the direction's order), ``steps`` (the first and last step that can contribute),
    ``initial`` (the initial state's term) and ``total`` (the stored value they sum to, checked
    by :func:`rnnlens.decompose`). ``field``: the heatmap clicked (a state-space layer's
    ``state_norm``: ``unit`` is its row, ``norm`` is true and the values are projections)."""
    view.check_sample(sample)
    rows = view.states[layer].spec.state_shape is not None
    if rows and field != "state_norm":
        raise InputError(
            f"Layer {layer!r} is a state-space mixer: its {field!r} is not its state. Click a row of "
            "its state_norm heatmap to see what each step wrote into that row of the state."
        )
    width = view.width(layer, "state_norm" if rows else "h")
    if not 0 <= unit < width:
        raise InputError(f"unit {unit} is out of range: layer {layer!r} has {width} units (0..{width - 1}).")
    dec = decompose(view.states, layer, direction=direction)
    if not 0 <= t < dec.n_steps:
        raise InputError(
            f"step {t} is out of range: the store holds {dec.n_steps} steps (0..{dec.n_steps - 1})."
        )
    contributions, initial_term = dec.at_with_initial(t, samples=slice(sample, sample + 1))
    if rows:
        part, initial = _projected(contributions[0], initial_term[0], dec.state_shape, unit, layer)
    else:
        part = contributions.reshape(1, -1, width)[0, :, unit]
        initial = float(initial_term.reshape(-1)[unit])
    values = np.zeros(dec.n_steps)
    first, last = (t, dec.n_steps - 1) if dec.backward else (0, t)
    values[first : last + 1] = part
    total = float(part.sum() + initial)
    return {
        "layer": layer, "field": dec.field, "direction": direction, "sample": sample, "t": t,
        "unit": unit, "steps": [first, last], "values": [float(v) for v in values],
        "initial": initial, "total": total, "norm": rows,
    }  # fmt: skip


def _projected(
    contributions: np.ndarray, initial: np.ndarray, shape: tuple[int, ...], row: int, layer: str
) -> tuple[np.ndarray, float]:
    """Each step's contribution to state row ``row`` projected on the row's value at t (what it
    adds to the row's norm), and the initial term's."""
    n_rows = int(np.prod(shape[:-1], dtype=np.int64))
    if row >= n_rows:  # e.g. RWKV-4's stabiliser part, which is not a sum of writes
        raise InputError(
            f"Row {row} of layer {layer!r}'s state is not decomposed: only its first {n_rows} rows "
            "are sums of per-step writes (see rnnlens.decompose)."
        )
    part = contributions.reshape(contributions.shape[0], n_rows, -1)[:, row]
    start = initial.reshape(n_rows, -1)[row]
    value = part.sum(axis=0) + start
    norm = float(np.linalg.norm(value))
    if norm == 0.0:
        return np.zeros(part.shape[0]), 0.0
    return part @ value / norm, float(start @ value / norm)
