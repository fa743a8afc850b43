"""Traced states as the arrays of a store chunk: :func:`piece_arrays` (one traced piece, checked
against the store's layout), :class:`ChunkAssembler` (pieces gathered into whole chunks) and
:func:`whole_chunk` (a chunk padded in time), shared by extraction and recording.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.states import States
from ..errors import InputError
from .errors import StoreMismatchError
from .layout import ArraySpec, LayerLayout, Layout, direction_path

__all__ = ["ChunkAssembler", "piece_arrays", "whole_chunk"]


def piece_arrays(
    states: States,
    user_mask: np.ndarray | None,
    n: int,
    *,
    layout: Layout | None,
    max_time: int | None,
    offset: int,
    path: Any,
) -> tuple[Layout, dict[str, np.ndarray]]:
    """The stored arrays of one traced piece (``mask``, ``lengths``, each layer's fields, not
    yet padded in time), and the layout: ``layout`` when given (checked to match), else the
    one these states define. ``max_time``: the store's time axis requested by the caller."""
    first = next(iter(states.values()))
    steps = int(first.directions[next(iter(first.directions))].h.shape[1])
    axis = layout.max_time if layout is not None else max_time or steps
    if steps > axis:
        raise InputError(
            f"Samples {offset}..{offset + n - 1} have {steps} time steps, but the store's "
            f"time axis has {axis} (fixed by {'max_time' if max_time else 'the first batch'}). "
            "Pass max_time=<longest sequence> (CLI: --max-time) with overwrite=True, or pad every "
            "batch to one length."
        )
    mine = _layout_of(states, axis)
    if layout is None:
        layout = mine
    elif mine.layers != layout.layers or mine.backend != layout.backend:
        raise StoreMismatchError(
            f"This batch's states ({_describe_layout(mine)}) differ from those already in "
            f"{path} ({_describe_layout(layout)}). Pass overwrite=True to start over."
        )
    mask = np.ones((n, steps), dtype=bool)
    for given, what in ((states.mask, "the model's mask"), (user_mask, "mask")):
        if given is None:
            continue
        given = np.asarray(given, dtype=bool)
        if given.shape != (n, steps):
            raise InputError(
                f"{what} has shape {given.shape}; the traced states have (sample, time) = {(n, steps)}."
            )
        mask &= given
    out: dict[str, np.ndarray] = {"mask": mask, "lengths": mask.sum(axis=1, dtype=np.int32)}
    for lay in layout.layers:
        ls = states[lay.name]
        for dname in lay.directions:
            d = ls.directions[dname]
            base = direction_path(lay.name, dname)
            for field in lay.fields:
                if lay.state_shape is not None and field == "gates":  # one array per gate
                    for g in lay.gate_names:
                        out[f"{base}/gate_{g}"] = d.gates[g]
                elif field == "state":
                    out[f"{base}/state"] = d.state
                    for part, _ in lay.part_shapes:
                        out[f"{base}/state_{part}"] = d.state_parts[part]
                else:
                    out[f"{base}/{field}"] = d.gates.array if field == "gates" else getattr(d, field)
    return layout, out


class ChunkAssembler:
    """Traced pieces into one store chunk of up to ``size`` samples: cast to the stored dtypes
    and padded in time with the fill values. A piece that is a whole chunk is used as it is
    (no copy). The one assembler of :class:`~rnnlens.extract.run.Run` and the Dask workers.

    Example:
        >>> import numpy as np
        >>> from rnnlens.io.layout import ArraySpec
        >>> spec = ArraySpec("lengths", (), "int32", ("sample",), 0, {})
        >>> a = ChunkAssembler({"lengths": spec}, size=4)
        >>> a.add({"lengths": np.array([3, 2])}, 2); a.add({"lengths": np.array([1])}, 1)
        >>> a.filled, a.take()["lengths"].tolist(), a.filled
        (3, [3, 2, 1], 0)
    """

    def __init__(self, specs: dict[str, ArraySpec], size: int) -> None:
        self.specs, self.size = specs, size
        self.filled = 0
        self._buffer: dict[str, np.ndarray] | None = None
        self._max_time = next((s.tail[0] for s in specs.values() if s.tail), None)

    def add(self, arrays: dict[str, np.ndarray], n: int) -> None:
        """Append one traced piece of ``n`` samples (its time axis may be shorter)."""
        full_time = arrays["mask"].shape[1] == self._max_time if "mask" in arrays else True
        if self.filled == 0 and n == self.size and full_time:
            self._buffer = {k: _cast(a, self.specs[k].dtype) for k, a in arrays.items()}
            self.filled = n
            return
        if self._buffer is None:
            self._buffer = {
                key: np.full((self.size, *spec.tail), spec.fill, dtype=spec.dtype)
                for key, spec in self.specs.items()
            }
        start, stop = self.filled, self.filled + n
        for key, a in arrays.items():
            if key == "lengths":
                self._buffer[key][start:stop] = a
            else:
                self._buffer[key][start:stop, : a.shape[1]] = a
        self.filled = stop

    def take(self) -> dict[str, np.ndarray]:
        """The chunk so far (its first :attr:`filled` samples); the assembler starts empty again."""
        assert self._buffer is not None, "no piece was added"
        chunk = {k: v[: self.filled] for k, v in self._buffer.items()}
        self._buffer, self.filled = None, 0
        return chunk

    def clear(self) -> None:
        self._buffer, self.filled = None, 0


def whole_chunk(arrays: dict[str, np.ndarray], layout: Layout, n: int) -> dict[str, np.ndarray]:
    """One traced piece as a chunk of ``n`` samples, assembled as :class:`Run` assembles one."""
    assembler = ChunkAssembler({spec.key: spec for spec in layout.arrays()}, n)
    assembler.add(arrays, n)
    return assembler.take()


# --------------------------------------------------------------------------- helpers


def _layout_of(states: States, max_time: int) -> Layout:
    layers = []
    for name, ls in states.items():
        d0 = next(iter(ls.directions.values()))
        feature: dict[str, Any] = {}
        if ls.spec.feature_shape is not None:  # ConvLSTM: a feature map per step
            feature["feature_shape"] = tuple(ls.spec.feature_shape)
        if ls.spec.state_shape is not None:  # a state-space mixer: state, parts, gates by shape
            feature = {
                "state_shape": tuple(ls.spec.state_shape),
                "gate_shapes": tuple(tuple(d0.gates[g].shape[2:]) for g in d0.gates)
                if "gates" in d0.fields
                else None,
                "part_shapes": tuple((k, tuple(v.shape[2:])) for k, v in d0.state_parts.items()),
                "constants": dict(ls.spec.constants),
            }
        layers.append(
            LayerLayout(
                name=name,
                kind=ls.spec.kind,
                layer_type=ls.spec.layer_type,
                units=int(ls.spec.units),
                cell_units=None if ls.spec.cell_units is None else int(ls.spec.cell_units),
                directions=tuple(ls.directions),
                fields=tuple(d0.fields),
                dtype=np.dtype(d0.h.dtype).name,
                notes=tuple(ls.spec.notes),
                **feature,
            )
        )
    return Layout(max_time=max_time, backend=states.backend, layers=tuple(layers))


def _describe_layout(layout: Layout) -> str:
    return (
        "; ".join(
            f"{lay.name}: {lay.kind} {lay.units} units, {'+'.join(lay.directions)}, {','.join(lay.fields)}"
            for lay in layout.layers
        )
        + f"; backend {layout.backend}"
    )


def _cast(a: np.ndarray, dtype: str) -> np.ndarray:
    return a if a.dtype == np.dtype(dtype) else a.astype(dtype)
