"""Export a state store to one ``.npz`` or HDF5 file, reading one chunk of samples at a time.

``npz`` — the store's arrays, flat, shapes unchanged (``np.load(path)`` needs no rnnlens):

* ``mask`` (sample, time) bool and ``lengths`` (sample,) int32;
* ``<layer>_<direction>_<field>`` for ``h`` and ``c``: (sample, time, unit);
* ``<layer>_<direction>_gates``: (sample, time, gate, unit), gate order in
  ``<layer>_<direction>_gate_names``;
* state-space mixers: ``<layer>_<direction>_state`` (sample, time, *state shape), its parts
  ``..._state_<part>`` and one array per gate, ``..._gates_<gate>`` (sample, time, *its shape).

``hdf5`` — the flat layout `LSTMVis <https://github.com/HendrikStrobelt/LSTMVis>`_ reads:
only *valid* steps (``mask`` True), concatenated over all sequences in sample order, then
time order:

* ``<layer>_<direction>_<field>`` for ``h`` and ``c``: (total_valid_steps, unit) — point
  LSTMVis' ``states`` entries at these (e.g. ``path: lstm_1_forward_h``);
* ``<layer>_<direction>_gates_<gate>`` (total_valid_steps, unit), one per gate;
* ``sample_index`` and ``time_index`` (total_valid_steps,) int32: which sequence and step
  each row is (an index in place of LSTMVis' ``words``, which a store does not hold);
* ``lengths`` (sample,) int32; the file's attributes copy the store's root attributes
  (model name and weights hash, backend, ...).

Names: characters other than letters, digits, ``.``, ``-`` and ``_`` in layer names become
``_`` (``enc/lstm`` → ``enc_lstm``); a clash is an error. Both writers write a temporary file
beside ``out`` and rename it into place when done.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..core.optional import require
from .errors import StoreError
from .location import Location
from .stored import StoredGates, StoredStates
from .zarr import open_states

__all__ = ["export"]

Format = Literal["npz", "hdf5"]
_SUFFIXES: dict[str, Format] = {".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5"}


def export(
    store: str | os.PathLike[str] | Location,
    out: str | os.PathLike[str],
    *,
    to: Format | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Path:
    """Write the store at ``store`` (a path or URL) to the local file ``out`` as ``"npz"`` or
    ``"hdf5"`` (default: by suffix).

    Example:
        >>> from rnnlens.io import export
        >>> export("missing.zarr", "states.npz")
        Traceback (most recent call last):
        ...
        FileNotFoundError: No state store at 'missing.zarr'.
    """
    out_path = Path(out)
    fmt = to if to is not None else _SUFFIXES.get(out_path.suffix.lower())
    if fmt not in ("npz", "hdf5"):
        raise StoreError(
            f"Cannot tell the export format from {out_path.name!r}; expected to='npz' or 'hdf5' "
            f"(or a file ending in {', '.join(_SUFFIXES)})."
        )
    states = open_states(store, storage_options=storage_options)
    tmp = out_path.with_name(f".{out_path.name}.partial")
    try:
        if fmt == "npz":
            _write_npz(states, tmp)
        else:
            _write_hdf5(states, tmp)
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path


_BAD = re.compile(r"[^A-Za-z0-9_.\-]")


def _fields(states: StoredStates) -> Iterator[tuple[str, str, str, Any, tuple[str, ...]]]:
    """(flat name, layer, field, stored array, gate names) for every stored array."""
    seen: dict[str, str] = {}
    for name, ls in states.items():
        safe = _BAD.sub("_", name)
        for dname, d in ls.directions.items():
            for field in d.fields:
                flat = f"{safe}_{dname}_{field}"
                if flat in seen and seen[flat] != name:
                    raise StoreError(
                        f"Layers {seen[flat]!r} and {name!r} both export as {flat!r}; rename one layer."
                    )
                seen[flat] = name
                if field == "gates" and isinstance(d.gates, StoredGates):
                    yield flat, name, field, d.gates.array, tuple(d.gates.names)
                elif field == "gates":  # a state-space mixer's gates: one array each, own shapes
                    for g in d.gates.names:
                        yield f"{flat}_{g}", name, "gate", d.gates[g], ()
                else:
                    yield flat, name, field, getattr(d, field), ()
                    if field == "state":
                        for part, arr in d.state_parts.items():
                            yield f"{flat}_{part}", name, "state", arr, ()


def _blocks(arr: Any, step: int) -> Iterator[tuple[int, int, np.ndarray]]:
    n = int(arr.shape[0])
    for start in range(0, n, step):
        stop = min(start + step, n)
        yield start, stop, np.asarray(arr[start:stop])


def _step(states: StoredStates) -> int:
    return int(states.mask.chunks[0])


def _write_npz(states: StoredStates, path: Path) -> None:
    step = _step(states)
    arrays: list[tuple[str, Any]] = [("mask", states.mask), ("lengths", states.lengths)]
    extras: list[tuple[str, np.ndarray]] = []
    for flat, _, field, arr, gate_names in _fields(states):
        arrays.append((flat, arr))
        if field == "gates":
            extras.append((flat[: -len("gates")] + "gate_names", np.array(gate_names, dtype="U")))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays:
            header = {
                "descr": np.lib.format.dtype_to_descr(np.dtype(arr.dtype)),
                "fortran_order": False,
                "shape": tuple(int(s) for s in arr.shape),
            }
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, header)
                for _, _, block in _blocks(arr, step):
                    f.write(np.ascontiguousarray(block).tobytes())
        for name, small in extras:
            with zf.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, small, allow_pickle=False)


def _write_hdf5(states: StoredStates, path: Path) -> None:
    h5py = require("h5py", purpose="Exporting to HDF5")
    step = _step(states)
    lengths = np.asarray(states.lengths[...], dtype=np.int64)
    total = int(lengths.sum())
    fields = list(_fields(states))
    with h5py.File(path, "w") as f:
        for key, value in states.attrs.items():
            if key == "layout":
                continue
            f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) or value is None else value
        f.create_dataset("lengths", data=lengths.astype(np.int32))
        sample_index = f.create_dataset("sample_index", shape=(total,), dtype="int32")
        time_index = f.create_dataset("time_index", shape=(total,), dtype="int32")
        datasets: dict[str, list[tuple[Any, int | None]]] = {}
        for flat, _, field, arr, gate_names in fields:
            if field == "gates":
                datasets[flat] = [
                    (
                        f.create_dataset(
                            f"{flat}_{g}", shape=(total, *(int(s) for s in arr.shape[3:])), dtype=arr.dtype
                        ),
                        k,
                    )
                    for k, g in enumerate(gate_names)
                ]
                for (ds, _), g in zip(datasets[flat], gate_names):
                    ds.attrs["gate"] = g
            else:  # (total valid steps, *per-step shape)
                shape = (total, *(int(s) for s in arr.shape[2:]))
                datasets[flat] = [(f.create_dataset(flat, shape=shape, dtype=arr.dtype), None)]
        pos = 0
        for start, stop, mask in _blocks(states.mask, step):
            rows, steps = np.nonzero(mask)
            k = len(rows)
            if k == 0:
                continue
            sample_index[pos : pos + k] = (rows + start).astype(np.int32)
            time_index[pos : pos + k] = steps.astype(np.int32)
            for flat, _, _, arr, _ in fields:
                block = np.asarray(arr[start:stop])[rows, steps]
                for ds, gate in datasets[flat]:
                    ds[pos : pos + k] = block if gate is None else block[:, gate]
            pos += k
        if pos != total:
            raise StoreError(
                f"The store's mask has {pos} valid steps but its lengths sum to {total}; the store is "
                "inconsistent (was it written completely?)."
            )
