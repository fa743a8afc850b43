"""Containers for traced states: :class:`States` → :class:`LayerStates` → :class:`DirectionStates`.

They hold arrays and answer lookups; analysis and plotting live elsewhere. Shapes use the
dimension names ``sample, time, unit`` (and ``gate`` inside :attr:`Gates.array`); for a
ConvLSTM layer ``unit`` is the layer's feature map, ``(*spatial, channel)`` as the layer
outputs it. A backward direction is always stored in *input* time order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from ..errors import DirectionNotAvailableError, FieldNotAvailableError, InputError, LayerNotFoundError
from .html import layer_html, states_html
from .spec import LayerSpec
from .table import format_table
from .xarray_views import layer_dataset, states_datatree

__all__ = ["DirectionStates", "Gates", "LayerStates", "States"]


class Gates(Mapping[str, np.ndarray]):
    """Gate activations by canonical name, each (sample, time, unit); NaN at masked steps.

    ``array`` stacks them into one (sample, time, gate, unit) block in the order of
    ``names`` (built on first use: a copy).
    """

    def __init__(self, parts: Sequence[np.ndarray], names: tuple[str, ...]):
        if len(parts) != len(names):
            raise ValueError(f"{len(names)} gate names {names} for {len(parts)} gate arrays")
        self.parts = tuple(parts)
        self.names = names
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.stack(self.parts, axis=2)
        return self._array

    def __getitem__(self, name: str) -> np.ndarray:
        if not isinstance(name, str):
            raise InputError(
                f"Gates are looked up by name, one of {list(self.names)}; received {name!r}. For one "
                "(sample, time, gate, unit) block, index gates.array."
            )
        try:
            return self.parts[self.names.index(name)]
        except ValueError:
            raise LayerNotFoundError(name, self.names, what="gate") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def read(self, names: Sequence[str], rows: slice) -> list[np.ndarray]:
        """The gates ``names`` of samples ``rows``, each (sample, time, unit) as NumPy arrays
        (a stored layer reads its gate block once for all of them)."""
        return [np.asarray(self[name][rows]) for name in names]

    def __repr__(self) -> str:
        shape = self.parts[0].shape if self.parts else ()
        return f"Gates({', '.join(self.names)}; each {shape})"


class DirectionStates:
    """One direction of one layer: ``h``, ``c``, ``gates`` per step, input time order."""

    def __init__(
        self,
        direction: str,
        h: np.ndarray | None,
        c: np.ndarray | None = None,
        gates: Gates | None = None,
        mask: np.ndarray | None = None,
        *,
        layer: str = "",
        state: np.ndarray | None = None,
        state_parts: Mapping[str, np.ndarray] | None = None,
        state_norm: np.ndarray | None = None,
    ):
        self.direction = direction
        self._h, self._c, self._gates, self._state = h, c, gates, state
        #: further named parts of the state at each step (mLSTM: ``n``, ``m``); empty for others
        self.state_parts: dict[str, np.ndarray] = dict(state_parts or {})
        self._state_norm = state_norm
        self.mask = mask
        self._layer = layer

    @property
    def h(self) -> np.ndarray:
        """Hidden state after each step, (sample, time, unit)."""
        return _need(self._h, "h", self._layer)

    @property
    def c(self) -> np.ndarray:
        """LSTM cell state after each step, (sample, time, cell_unit)."""
        return _need(self._c, "c", self._layer)

    @property
    def gates(self) -> Gates:
        """Gate activations by canonical name (LSTM ``i f g o``, GRU ``z r n``)."""
        return _need(self._gates, "gates", self._layer)

    @property
    def state(self) -> np.ndarray:
        """The recurrent state after each step of a state-space mixer, (sample, time, *state
        shape): Mamba (channel, d_state), RG-LRU (unit,)."""
        return _need(self._state, "state", self._layer)

    @property
    def state_norm(self) -> np.ndarray:
        """The state's L2 norm over its last axis after each step, (sample, time, unit): Mamba
        one value per channel, Mamba2 per (head, head_dim) flattened."""
        return _need(self._state_norm, "state_norm", self._layer)

    @property
    def fields(self) -> tuple[str, ...]:
        present = (("h", self._h), ("c", self._c), ("gates", self._gates), ("state", self._state),
                   ("state_norm", self._state_norm))  # fmt: skip
        return tuple(name for name, value in present if value is not None)

    def last(self, field: Literal["h", "c"] = "h") -> np.ndarray:
        """The final state after reading the whole sequence, (sample, unit).

        For ``forward`` that is the last step, for ``backward`` the first step in input
        order: exactly what the layer returns with ``return_sequences=False``.
        """
        arr = self.h if field == "h" else self.c
        return arr[:, 0] if self.direction == "backward" else arr[:, -1]

    def __repr__(self) -> str:
        return f"DirectionStates({self._layer!r}, {self.direction}, fields={self.fields})"


class LayerStates:
    """Per-step states of one recurrent layer.

    ``h`` / ``c`` / ``gates`` of a bidirectional layer join the directions along the unit
    axis, forward first (the layout of Keras' ``merge_mode="concat"`` and of PyTorch's
    output); ``forward`` and ``backward`` give one direction each.
    """

    def __init__(self, spec: LayerSpec, directions: Mapping[str, DirectionStates], mask: np.ndarray | None):
        self.spec = spec
        self.directions = dict(directions)
        self.mask = mask

    name = property(lambda self: self.spec.name)
    kind = property(lambda self: self.spec.kind)
    units = property(lambda self: self.spec.units)

    @property
    def fields(self) -> tuple[str, ...]:
        return next(iter(self.directions.values())).fields

    @property
    def forward(self) -> DirectionStates:
        return self._direction("forward")

    @property
    def backward(self) -> DirectionStates:
        return self._direction("backward")

    def _direction(self, name: str) -> DirectionStates:
        if name not in self.directions:
            raise DirectionNotAvailableError(
                f"Layer {self.name!r} runs in direction(s) {list(self.directions)}, not {name!r}. "
                "Use .h, or the direction it has."
            )
        return self.directions[name]

    @property
    def h(self) -> np.ndarray:
        """(sample, time, unit × directions)."""
        return self._join([d.h for d in self.directions.values()])

    @property
    def c(self) -> np.ndarray:
        """(sample, time, cell_unit × directions); LSTM and ConvLSTM only."""
        return self._join([d.c for d in self.directions.values()])

    @property
    def gates(self) -> Gates:
        per_direction = [d.gates for d in self.directions.values()]
        if len(per_direction) == 1:
            return per_direction[0]
        names = per_direction[0].names
        return Gates([np.concatenate([g[n] for g in per_direction], axis=-1) for n in names], names)

    @property
    def state(self) -> np.ndarray:
        """(sample, time, *state shape): the recurrent state of a state-space mixer (one direction)."""
        return self._direction(next(iter(self.directions))).state

    @property
    def state_norm(self) -> np.ndarray:
        """(sample, time, unit): the state's L2 norm over its last axis (one direction)."""
        return self._direction(next(iter(self.directions))).state_norm

    @property
    def state_parts(self) -> dict[str, np.ndarray]:
        """Further named parts of the state (mLSTM: normaliser ``n``, stabiliser ``m``)."""
        return self._direction(next(iter(self.directions))).state_parts

    def last(self, field: Literal["h", "c"] = "h") -> np.ndarray:
        """Final state of each direction, (sample, unit × directions).

        Equals the layer's own output with ``return_sequences=False`` (concat merge).
        """
        return self._join([d.last(field) for d in self.directions.values()])

    @staticmethod
    def _join(parts: list[np.ndarray]) -> np.ndarray:
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.h.shape)

    def __repr__(self) -> str:
        return (
            f"LayerStates({self.name!r}, kind={self.kind}, units={self.units}, "
            f"directions={list(self.directions)}, fields={self.fields}, shape={self.shape})"
        )

    def to_xarray(self, *, tokens: Any = None) -> Any:
        """This layer as an ``xarray.Dataset`` (see :func:`rnnlens.core.xarray_views.layer_dataset`)."""
        return layer_dataset(self, tokens=tokens)

    def _repr_html_(self) -> str:  # notebooks: the table row and a heatmap of sample 0's h
        return layer_html(self)


class States(Mapping[str, LayerStates]):
    """Traced states of a model: a mapping from layer name to :class:`LayerStates`, in model order.

    ``mask`` is the (sample, time) boolean mask of valid steps the model used (``None`` when
    the model had no mask): the mask of the first traced layer that had one.
    """

    def __init__(self, layers: Mapping[str, LayerStates], *, backend: str = ""):
        self._layers = dict(layers)
        self.backend = backend
        self.mask = next((ls.mask for ls in self._layers.values() if ls.mask is not None), None)

    def __getitem__(self, name: str) -> LayerStates:
        try:
            return self._layers[name]
        except KeyError:
            raise LayerNotFoundError(name, list(self._layers), what="traced layer") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __repr__(self) -> str:
        table = layer_table(self._layers.values())
        masked = "none" if self.mask is None else f"{int((~self.mask).sum())} masked steps"
        layers = "1 layer" if len(self) == 1 else f"{len(self)} layers"
        return f"States ({layers}, mask: {masked})\n{table}"

    def to_datatree(self) -> Any:
        """Every layer as an ``xarray.DataTree`` in a store's structure (see
        :func:`rnnlens.core.xarray_views.states_datatree`)."""
        return states_datatree(self)

    def _repr_html_(self) -> str:  # notebooks: the table and a heatmap per layer
        return states_html(self)


def _need(value, field: str, layer: str):  # type: ignore[no-untyped-def]
    if value is None:
        raise FieldNotAvailableError(
            f"Field {field!r} of layer {layer!r} was not traced or does not exist for this layer. "
            f"Ask for it with trace(..., fields=(..., {field!r})); LSTM layers have h, c and "
            "gates, GRU layers h and gates, state-space mixers h, gates, state and state_norm, "
            "other layers h."
        )
    return value


def layer_table(layers: Iterable[LayerStates]) -> str:
    """The table ``repr(States)`` shows: one row per layer."""
    return format_table(
        ("layer", "kind", "units", "directions", "fields", "shape"),
        [
            (
                ls.name,
                ls.kind,
                str(ls.units),
                "+".join(ls.directions),
                ",".join(ls.fields),
                "×".join(map(str, ls.shape)),
            )
            for ls in layers
        ],
    )
