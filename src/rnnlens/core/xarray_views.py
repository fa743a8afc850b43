"""In-memory states as xarray: :func:`layer_dataset` (``LayerStates.to_xarray()``) and
:func:`states_datatree` (``States.to_datatree()``), the latter in the structure
``xarray.open_datatree`` gives for a store written by :func:`rnnlens.extract_to` (the same
groups, variable names, dimension names and layer attributes), so code written against one
works on the other. No data is copied: the variables wrap the arrays as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .names import LAYERS_GROUP, direction_path, encode_name
from .optional import require

__all__ = ["layer_dataset", "states_datatree"]


def _xr() -> Any:
    return require("xarray", purpose="xarray views")


def _direction_vars(ls: Any, direction: str) -> dict[str, Any]:
    ds = ls.directions[direction]
    feature = tuple(f"feature_{k}" for k in range(ds.h.ndim - 3))  # ConvLSTM maps: (*spatial, channel)
    unit = (*feature, "unit") if feature else ("unit",)
    cell = (*feature, "cell_unit") if feature else ("cell_unit",)
    out: dict[str, Any] = {"h": (("sample", "time", *unit), ds.h)}
    if "c" in ds.fields:
        out["c"] = (("sample", "time", *cell), ds.c)
    if "gates" in ds.fields:
        g = ds.gates
        out["gates"] = (("sample", "time", "gate", *cell), np.stack([g[name] for name in g], axis=2))
    return out


def _layer_attrs(ls: Any) -> dict[str, Any]:
    spec = ls.spec
    first = next(iter(ls.directions.values()))
    attrs = {
        "name": spec.name,
        "kind": spec.kind,
        "layer_type": spec.layer_type,
        "units": int(spec.units),
        "cell_units": None if spec.cell_units is None else int(spec.cell_units),
        "directions": list(spec.directions),
        "fields": list(first.fields),
        "dtype": str(first.h.dtype),
        "notes": list(spec.notes),
    }
    if "gates" in first.fields:
        attrs["gate_names"] = list(first.gates)
    return attrs


def layer_dataset(ls: Any, *, tokens: Any = None) -> Any:
    """One layer as an ``xarray.Dataset``: ``h`` (direction, sample, time, unit), ``c``,
    ``gates`` (…, gate, cell_unit) with ``direction`` and ``gate`` coordinates, ``mask``
    (sample, time) where the model had one, and ``token`` (sample, time) when ``tokens`` is given.

    Example:
        >>> import numpy as np, torch, rnnlens
        >>> states = rnnlens.trace(torch.nn.GRU(3, 4, batch_first=True), np.ones((2, 5, 3), "float32"))
        >>> states["gru"].to_xarray()["gates"].dims
        ('direction', 'sample', 'time', 'gate', 'cell_unit')
    """
    xr = _xr()
    names = list(ls.directions)
    per = [_direction_vars(ls, d) for d in names]
    data: dict[str, Any] = {}
    for key in per[0]:
        dims, _ = per[0][key]
        data[key] = (("direction", *dims), np.stack([p[key][1] for p in per], axis=0))
    coords: dict[str, Any] = {"direction": names}
    if "gates" in data:
        coords["gate"] = list(ls.directions[names[0]].gates)
    if ls.mask is not None:
        data["mask"] = (("sample", "time"), ls.mask)
    if tokens is not None:
        coords["token"] = (("sample", "time"), np.asarray(tokens))
    return xr.Dataset(data, coords=coords, attrs=_layer_attrs(ls))


def states_datatree(states: Any) -> Any:
    """Every layer as an ``xarray.DataTree`` laid out like a store: the root holds ``mask`` and
    ``lengths`` (when the model had a mask), ``/layers/<layer>`` the layer's attributes and
    ``/layers/<layer>/<direction>`` its ``h``, ``c`` and ``gates``."""
    xr = _xr()
    groups: dict[str, Any] = {}
    root: dict[str, Any] = {}
    if states.mask is not None:
        root["mask"] = (("sample", "time"), states.mask)
        root["lengths"] = (("sample",), states.mask.sum(axis=1).astype(np.int32))
    groups["/"] = xr.Dataset(root, attrs={"format": "rnnlens.states", "backend": states.backend,
                                          "layer_names": list(states)})  # fmt: skip
    groups[f"/{LAYERS_GROUP}"] = xr.Dataset()
    for name in states:
        ls = states[name]
        groups[f"/{LAYERS_GROUP}/{encode_name(name)}"] = xr.Dataset(attrs=_layer_attrs(ls))
        for direction in ls.directions:
            attrs = {"layer": name, "direction": direction, "time_order": "input"}
            groups["/" + direction_path(name, direction)] = xr.Dataset(
                _direction_vars(ls, direction), attrs=attrs
            )
    return xr.DataTree.from_dict(groups)
