"""The on-disk schema of a state store, in one place.

A store is a Zarr v3 hierarchy (a directory, or a prefix of an object store: see
:mod:`rnnlens.io.location`)::

    run.zarr/
      zarr.json                      root group; attributes describe the run (below)
      mask                           (sample, time) bool: which steps are real
      lengths                        (sample,) int32: number of real steps per sequence
      layers/<layer>/                group per traced layer; attributes: the layer's spec
      layers/<layer>/<direction>/    "forward" / "backward", each with
          h                          (sample, time, unit)
          c                          (sample, time, cell_unit)            LSTM only
          gates                      (sample, time, gate, unit)           GRU
                                     (sample, time, gate, cell_unit)      LSTM
                                     attribute ``gate_names`` (canonical order: i f g o / z r n)
      manifest/                      a Zarr group whose attributes are the resume manifest

Every array carries Zarr v3 ``dimension_names``, so ``xarray.open_zarr(path, group=
"layers/<layer>/<direction>", consolidated=False)`` and ``xarray.open_datatree(path,
engine="zarr")`` give named dimensions without rnnlens. Arrays are chunked along ``sample``
only: one chunk is one extraction batch (``batch_size`` sequences), whole in ``time`` and
``unit``. Chunks are not compressed: hidden states are dense floats (zstd saved under 10%
here at several times the cost of writing them). Backward directions are stored in *input*
time order.

Time axis: fixed when the first batch is written (its number of steps, or ``max_time``).
Shorter batches are padded at the end: states there are NaN (the Zarr fill value), ``mask``
is False; steps the model masked itself keep what the model computed (the carried state; NaN
gates), with ``mask`` False as well. ``lengths`` counts the True steps of ``mask``.

Layer names become group names unchanged where Zarr allows it; ``/`` and ``%`` are
percent-encoded (``"enc/lstm"`` → ``"enc%2Flstm"``), and the original name is the group's
``name`` attribute.

Root attributes: ``schema_version``, ``rnnlens_version``, ``backend`` (``States.backend``),
``model_name``, ``model_sha256`` (the model's identity: sha256 over its weights and
architecture, :mod:`rnnlens.core.digest`),
``fields`` / ``layers`` (as requested; null = all), ``layer_names`` (as traced),
``time_order`` ("input"), ``batch_size`` (samples per chunk), ``max_time``, ``dtype``,
``n_samples`` and ``complete`` (set when the run was closed).

The manifest (``manifest/zarr.json``, rewritten atomically: temp file + ``os.replace``, or
one PUT on an object store, after each chunk's arrays are fully written) holds the run's
configuration, the layout chosen from the first batch, ``chunks_done`` (the first
``chunks_done`` chunks are complete), ``samples_done`` (the samples in them) and
``input_sha256``, a hash chained over the input of each of those chunks, so that resuming
with different data is refused. A distributed run
(:mod:`rnnlens.distributed`) finishes chunks out of order: a chunk completed beyond the
first gap is kept in ``pending`` (``{"<index>": {"n": samples, "input_sha256": digest}}``)
until the chunks before it are done, when it joins the chain (:func:`record_chunk`). So the
manifest stays small (the chain plus the few chunks in flight) and one process and a Dask
cluster resume each other's runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as _field
from typing import Any

import numpy as np

from ..core.kinds import KINDS
from ..core.names import LAYERS_GROUP as LAYERS_GROUP  # the store schema names them too
from ..core.names import decode_name as decode_name
from ..core.names import direction_path as direction_path
from ..core.names import encode_name as encode_name
from ..core.spec import GATE_NAMES, LayerSpec
from .data import chain
from .errors import StoreError
from .location import Location

__all__ = [
    "DIMS",
    "MANIFEST_GROUP",
    "SCHEMA_VERSION",
    "ArraySpec",
    "LayerLayout",
    "Layout",
    "any_chunk_done",
    "array_dims",
    "decode_name",
    "direction_path",
    "done_chunks",
    "encode_name",
    "layout_attributes",
    "read_manifest",
    "record_chunk",
    "root_attributes",
    "write_manifest",
]

SCHEMA_VERSION = 1
FORMAT = "rnnlens.states"
MANIFEST_GROUP = "manifest"
MANIFEST_FILE = f"{MANIFEST_GROUP}/zarr.json"
TIME_ORDER = "input"

#: dimension names of each stored array
DIMS: dict[str, tuple[str, ...]] = {
    "mask": ("sample", "time"),
    "lengths": ("sample",),
    "h": ("sample", "time", "unit"),
    "c": ("sample", "time", "cell_unit"),
    "state_norm": ("sample", "time", "state_unit"),
}


def array_dims(field: str, kind: str) -> tuple[str, ...]:
    """Dimension names of a stored field of a layer of ``kind``."""
    if field == "gates":
        return ("sample", "time", "gate", "cell_unit" if KINDS[kind].has_c else "unit")
    return DIMS[field]


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class ArraySpec:
    """One stored array: its key under the root, shape after ``sample``, dtype, dims, fill."""

    key: str
    tail: tuple[int, ...]
    dtype: str
    dims: tuple[str, ...]
    fill: Any
    attrs: dict[str, Any]


@dataclass(frozen=True)
class LayerLayout:
    """What is stored for one layer: its spec, the fields traced, and their dtype."""

    name: str
    kind: str
    layer_type: str
    units: int
    cell_units: int | None
    directions: tuple[str, ...]
    fields: tuple[str, ...]
    dtype: str
    notes: tuple[str, ...] = ()
    #: state-space mixers: the per-step shape of ``state``, of each gate (stored one array per
    #: gate: their shapes differ) and of each further named state part
    state_shape: tuple[int, ...] | None = None
    gate_shapes: tuple[tuple[int, ...], ...] | None = None
    part_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    #: ConvLSTM: the per-step shape of h, c and each gate (a feature map) in place of (unit,)
    feature_shape: tuple[int, ...] | None = None
    #: the layer's recurrence constants (:attr:`LayerSpec.constants`), kept in the layout's JSON
    constants: Mapping[str, np.ndarray] = _field(default_factory=dict, compare=False)

    @property
    def gate_names(self) -> tuple[str, ...]:
        return GATE_NAMES.get(self.kind, ())

    def feature_dims(self, shape: tuple[int, ...], prefix: str) -> tuple[str, ...]:
        """Dimension names of one axis set of a state-space array: the state's own dimension
        names where the size matches (so xarray aligns them), else ``<prefix>_dim<i>``."""
        pool = list(zip(KINDS[self.kind].state_dims, self.state_shape or ()))
        names = []
        for i, size in enumerate(shape):
            match = next((n for n, s in pool if s == size and n not in names), None)
            names.append(match or f"{prefix}_dim{i}")
        return tuple(names)

    def width(self, field: str) -> int:
        if field == "state_norm":  # the state's positions but its last axis
            return int(np.prod((self.state_shape or (1,))[:-1], dtype=np.int64))
        if field == "h" or (field == "gates" and not KINDS[self.kind].has_c):
            return self.units
        return self.cell_units if self.cell_units is not None else self.units

    def spec(self) -> LayerSpec:
        return LayerSpec(
            name=self.name,
            kind=self.kind,  # type: ignore[arg-type]
            layer_type=self.layer_type,
            units=self.units,
            directions=self.directions,
            fields=self.fields,  # type: ignore[arg-type]
            cell_units=self.cell_units,
            notes=self.notes,
            state_shape=self.state_shape,
            feature_shape=self.feature_shape,
            constants=self.constants,
        )

    def to_json(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.state_shape is not None:  # only state-space layers carry these keys
            extra = {
                "state_shape": list(self.state_shape),
                "gate_shapes": [list(s) for s in self.gate_shapes or ()],
                "part_shapes": {k: list(s) for k, s in self.part_shapes},
            }
        if self.feature_shape is not None:
            extra["feature_shape"] = list(self.feature_shape)
        if self.constants:  # float32 values round-trip exactly through JSON's doubles
            extra["constants"] = {
                k: {"shape": list(v.shape), "dtype": v.dtype.name, "values": v.ravel().tolist()}
                for k, v in self.constants.items()
            }
        return extra | {
            "name": self.name,
            "kind": self.kind,
            "layer_type": self.layer_type,
            "units": self.units,
            "cell_units": self.cell_units,
            "directions": list(self.directions),
            "fields": list(self.fields),
            "dtype": self.dtype,
            "notes": list(self.notes),
            "gate_names": list(self.gate_names),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LayerLayout:
        return cls(
            name=str(d["name"]),
            kind=str(d["kind"]),
            layer_type=str(d["layer_type"]),
            units=int(d["units"]),
            cell_units=None if d.get("cell_units") is None else int(d["cell_units"]),
            directions=tuple(d["directions"]),
            fields=tuple(d["fields"]),
            dtype=str(d["dtype"]),
            notes=tuple(d.get("notes", ())),
            state_shape=None if d.get("state_shape") is None else tuple(int(v) for v in d["state_shape"]),
            gate_shapes=None
            if d.get("gate_shapes") is None
            else tuple(tuple(int(v) for v in s) for s in d["gate_shapes"]),
            part_shapes=tuple(
                (str(k), tuple(int(v) for v in s)) for k, s in d.get("part_shapes", {}).items()
            ),
            feature_shape=_ints(d.get("feature_shape")),
            constants={
                str(k): np.asarray(v["values"], dtype=v["dtype"]).reshape(v["shape"])
                for k, v in d.get("constants", {}).items()
            },
        )


@dataclass(frozen=True)
class Layout:
    """Everything fixed by the first batch: time steps, backend, and each layer's arrays."""

    max_time: int
    backend: str
    layers: tuple[LayerLayout, ...]

    def arrays(self) -> list[ArraySpec]:
        out = [
            ArraySpec("mask", (self.max_time,), "bool", DIMS["mask"], False, {}),
            ArraySpec("lengths", (), "int32", DIMS["lengths"], 0, {}),
        ]
        for layer in self.layers:
            for direction in layer.directions:
                base = direction_path(layer.name, direction)
                for field in layer.fields:
                    if layer.state_shape is not None and field in ("state", "gates"):
                        out += _feature_arrays(layer, field, base, self.max_time)
                        continue
                    unit: tuple[int, ...] = (layer.width(field),)
                    dims = array_dims(field, layer.kind)
                    if layer.feature_shape is not None:  # a feature map per step
                        unit = tuple(layer.feature_shape)
                        names = tuple(f"feature_{i}" for i in range(len(unit)))
                        dims = dims[: len(dims) - 1] + names
                    tail: tuple[int, ...] = (self.max_time, *unit)
                    attrs: dict[str, Any] = {}
                    if field == "gates":
                        tail = (self.max_time, len(layer.gate_names), *unit)
                        attrs = {"gate_names": list(layer.gate_names)}
                    out.append(
                        ArraySpec(
                            f"{base}/{field}",
                            tail,
                            layer.dtype,
                            dims,
                            float("nan"),
                            attrs,
                        )
                    )
        return out

    def sample_bytes(self) -> int:
        """Bytes one sample takes in memory, every array together."""
        return sum(int(np.prod(a.tail, dtype=np.int64)) * np.dtype(a.dtype).itemsize for a in self.arrays())

    def to_json(self) -> dict[str, Any]:
        return {
            "max_time": self.max_time,
            "backend": self.backend,
            "layers": [layer.to_json() for layer in self.layers],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Layout:
        return cls(
            max_time=int(d["max_time"]),
            backend=str(d["backend"]),
            layers=tuple(LayerLayout.from_json(x) for x in d["layers"]),
        )


# --------------------------------------------------------------------------- manifest


def _ints(v: Any) -> tuple[int, ...] | None:
    return None if v is None else tuple(int(x) for x in v)


def _feature_arrays(layer: LayerLayout, field: str, base: str, max_time: int) -> list[ArraySpec]:
    """A state-space layer's ``state`` (and its named parts) or its gates, one array each:
    (sample, time, *its own shape), with dimension names xarray can align."""
    lead = ("sample", "time")
    if field == "state":
        assert layer.state_shape is not None
        shape = tuple(layer.state_shape)
        out = [ArraySpec(f"{base}/state", (max_time, *shape), layer.dtype,
                         lead + KINDS[layer.kind].state_dims, float("nan"), {})]  # fmt: skip
        for part, pshape in layer.part_shapes:
            dims = lead + layer.feature_dims(pshape, part)
            out.append(
                ArraySpec(f"{base}/state_{part}", (max_time, *pshape), layer.dtype, dims, float("nan"), {})
            )
        return out
    return [
        ArraySpec(
            f"{base}/gate_{g}", (max_time, *s), layer.dtype, lead + layer.feature_dims(s, g), float("nan"), {}
        )
        for g, s in zip(layer.gate_names, layer.gate_shapes or ())
    ]


def read_manifest(root: Any) -> dict[str, Any] | None:
    """The manifest of the store at ``root`` (a path, URL or :class:`~rnnlens.io.location.Location`);
    None when there is none (not an rnnlens store, or a run killed before it wrote anything)."""
    loc = Location.of(root)
    raw = loc.read_bytes(MANIFEST_FILE)
    if raw is None:
        return None
    path = loc.key(MANIFEST_FILE)
    try:
        doc = json.loads(raw.decode("utf-8"))
        manifest = doc["attributes"]["rnnlens_manifest"]
    except (ValueError, KeyError, TypeError) as e:
        raise StoreError(
            f"The resume manifest {path} is unreadable ({type(e).__name__}: {e}). It is written "
            "atomically by rnnlens, so another program changed it. Pass overwrite=True (CLI: "
            "--overwrite) to start the extraction over."
        ) from None
    if not isinstance(manifest, dict):
        raise StoreError(f"The resume manifest {path} does not hold a mapping; pass overwrite=True.")
    return manifest


def write_manifest(root: Any, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically (:meth:`~rnnlens.io.location.Location.write_atomic`:
    temp file, ``fsync``, ``os.replace`` on a local disk; one PUT on an object store).

    The manifest is stored as the attributes of a Zarr group, so Zarr and xarray see a valid
    (empty) group named ``manifest`` rather than an unknown file.
    """
    doc = {"zarr_format": 3, "node_type": "group", "attributes": {"rnnlens_manifest": manifest}}
    Location.of(root).write_atomic(MANIFEST_FILE, json.dumps(doc, indent=1, sort_keys=True).encode("utf-8"))


def record_chunk(manifest: dict[str, Any], index: int, n: int, digest: str) -> None:
    """Count chunk ``index`` (``n`` samples, input hash ``digest``) as complete, in place.

    Chunks after a gap wait in ``pending``; each chunk that closes the gap joins the chained
    ``input_sha256`` in index order. Recording a chunk again is a no-op (a retried task).

    Example:
        >>> m = {"chunks_done": 0, "samples_done": 0, "input_sha256": ""}
        >>> record_chunk(m, 1, 4, "b"); m["chunks_done"], sorted(m["pending"])
        (0, ['1'])
        >>> record_chunk(m, 0, 4, "a"); m["chunks_done"], m["samples_done"], m["pending"]
        (2, 8, {})
    """
    pending = manifest.setdefault("pending", {})
    if index < int(manifest["chunks_done"]) or str(index) in pending:
        return
    pending[str(index)] = {"n": int(n), "input_sha256": digest}
    while str(manifest["chunks_done"]) in pending:
        entry = pending.pop(str(manifest["chunks_done"]))
        manifest["input_sha256"] = chain(manifest["input_sha256"], entry["input_sha256"])
        manifest["chunks_done"] = int(manifest["chunks_done"]) + 1
        manifest["samples_done"] = int(manifest["samples_done"]) + int(entry["n"])


def done_chunks(manifest: dict[str, Any]) -> set[int]:
    """Indices of every chunk the manifest counts as complete (the prefix and ``pending``)."""
    return set(range(int(manifest.get("chunks_done", 0)))) | {int(k) for k in manifest.get("pending", {})}


def any_chunk_done(manifest: dict[str, Any]) -> bool:
    return bool(manifest.get("chunks_done")) or bool(manifest.get("pending"))


def root_attributes(
    *,
    model_name: str,
    batch_size: int,
    max_time: int | None,
    model_sha256: str | None = None,
    model_file: str | None = None,
    layers: list[str] | None = None,
    fields: list[str] | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """The root group's attributes of a store being written (the one place they are built:
    extraction and the synthetic stores of :mod:`rnnlens.testing.stores` both use it);
    :func:`layout_attributes` adds what the first traced batch fixes."""
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "rnnlens_version": version,
        "model_name": model_name,
        "model_file": model_file,
        "model_sha256": model_sha256,
        "layers": layers,
        "fields": fields,
        "time_order": TIME_ORDER,
        "batch_size": batch_size,
        "max_time": max_time,
        "complete": False,
    }


def layout_attributes(layout: Layout) -> dict[str, Any]:
    """Root attributes fixed by the layout: backend, layer names and the layout itself."""
    return {
        "backend": layout.backend,
        "layer_names": [layer.name for layer in layout.layers],
        "layout": layout.to_json(),
    }
