"""The store a run writes: its configuration and root attributes (built here once), and the
checks that decide whether an existing store is resumed, replaced or refused."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..core.spec import ALL_FIELDS
from ..core.version import __version__
from ..io.errors import StoreExistsError, StoreMismatchError
from ..io.layout import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    Layout,
    any_chunk_done,
    layout_attributes,
    read_manifest,
    root_attributes,
    write_manifest,
)
from ..io.location import Location
from ..io.zarr import StoreWriter, _zarr


class StoreTarget:
    """The store side of one extraction: its configuration (what must match to resume), root
    attributes, preparation (create, resume or refuse), array creation and completion.

    Shared by :class:`Run` (one process) and the Dask driver (:mod:`rnnlens.distributed`),
    which knows the model only by its weights hash, name and file.
    """

    def __init__(
        self,
        path: Any,
        *,
        model_sha256: str,
        model_name: str,
        model_file: str | None,
        layers: str | Iterable[str] | None,
        fields: str | Sequence[str] | None,
        batch_size: int,
        max_time: int | None,
    ):
        self.path = Location.of(path)
        self.batch_size = batch_size
        self.config: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "model_sha256": model_sha256,
            "layers": _norm_layers(layers),
            "fields": _norm_fields(fields),
            "batch_size": batch_size,
            "max_time": max_time,
        }
        self.root_attrs: dict[str, Any] = root_attributes(
            model_name=model_name,
            model_file=model_file,
            model_sha256=model_sha256,
            layers=self.config["layers"],
            fields=self.config["fields"],
            batch_size=batch_size,
            max_time=max_time,
            version=_version(),
        )

    def prepare(self, *, resume: bool, overwrite: bool) -> dict[str, Any]:
        """Create the store, or check the one there may be resumed; return its manifest."""
        root = self.path
        manifest = None
        if root.exists():
            if root.is_file():
                raise StoreExistsError(f"{root} exists and is a file, not a store; choose another path.")
            has_entries = root.has_entries()
            manifest = read_manifest(root) if not overwrite else None
            if manifest is not None and not any_chunk_done(manifest) and not manifest.get("complete"):
                # an earlier run stopped before storing anything: nothing to mix with, start afresh
                root.remove()
                has_entries, manifest = False, None
            if has_entries and overwrite:
                if not (root.exists("zarr.json") or root.exists(MANIFEST_FILE)):
                    raise StoreExistsError(
                        f"{root} exists and is not a Zarr store; refusing to delete it even with "
                        "overwrite=True. Choose another output path."
                    )
                root.remove()
            elif has_entries and manifest is None:
                raise StoreExistsError(
                    f"{root} exists and is not a resumable rnnlens store. Pass overwrite=True (CLI: "
                    "--overwrite) to replace it, or choose another path."
                )
            elif manifest is not None and not resume:
                done = (
                    "complete" if manifest.get("complete") else f"{manifest.get('samples_done', 0)} samples"
                )
                raise StoreExistsError(
                    f"{root} already holds an extraction ({done}). Pass overwrite=True (CLI: --overwrite) "
                    "to replace it, or resume=True to continue it."
                )
        if manifest is not None:
            diffs = _config_diff(manifest.get("config", {}), self.config)
            if diffs:
                raise StoreMismatchError(
                    f"{root} was written by a different extraction: {'; '.join(diffs)}. Refusing to mix "
                    "them in one store. Pass overwrite=True (CLI: --overwrite) to replace it, or write "
                    "to another path."
                )
        else:
            root.mkdir()
            manifest = {
                "config": self.config,
                "layout": None,
                "chunks_done": 0,
                "samples_done": 0,
                "input_sha256": "",
                "complete": False,
            }
            write_manifest(root, manifest)
        self._write_root_attrs(manifest)
        return manifest

    def _write_root_attrs(self, manifest: dict[str, Any]) -> None:
        group = _zarr().open_group(self.path.zarr_store(read_only=False), mode="a", zarr_format=3)
        attrs = dict(self.root_attrs)
        if manifest.get("complete"):
            attrs.update(complete=True, n_samples=manifest["samples_done"])
        group.attrs.update(attrs)

    def writer(self, layout: Layout, manifest: dict[str, Any], *, total: int | None, create: bool) -> Any:
        """A :class:`~rnnlens.io.zarr.StoreWriter`: the arrays created afresh (the manifest
        records the layout first) or opened to resume."""
        writer = StoreWriter(self.path, layout, batch_size=self.batch_size, n_samples=total)
        if create:
            manifest.update(layout=layout.to_json(), chunks_done=0, samples_done=0, input_sha256="")
            manifest.pop("pending", None)
            write_manifest(self.path, manifest)
            writer.create({**self.root_attrs, **layout_attributes(layout)})
        else:
            writer.open()
        return writer

    def finish(self, writer: Any, manifest: dict[str, Any], n_samples: int) -> None:
        """Set the final size and attributes, then mark the manifest complete."""
        writer.finish(n_samples, {**self.root_attrs, "complete": True, "n_samples": n_samples})
        manifest.update(complete=True, samples_done=n_samples)
        write_manifest(self.path, manifest)


# --------------------------------------------------------------------------- helpers


def _model_name(model: Any) -> str:
    name = getattr(model, "name", None)
    return str(name) if isinstance(name, str) and name else type(model).__name__


def _version() -> str:
    return str(__version__)


def _norm_layers(layers: str | Iterable[str] | None) -> list[str] | None:
    if layers is None:
        return None
    return [layers] if isinstance(layers, str) else sorted(set(layers))


def _norm_fields(fields: str | Sequence[str] | None) -> list[str] | None:
    if fields is None:
        return None
    asked = {fields} if isinstance(fields, str) else set(fields)
    asked.add("h")
    return [f for f in ALL_FIELDS if f in asked] + sorted(asked - set(ALL_FIELDS))


_CONFIG_WORDS = {
    "model_sha256": "model (weights and architecture, sha256)",
    "layers": "layers",
    "fields": "fields",
    "batch_size": "batch_size",
    "max_time": "max_time",
    "schema_version": "store schema version",
}


def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for key, word in _CONFIG_WORDS.items():
        a, b = old.get(key), new.get(key)
        if a != b:
            if key == "model_sha256":
                a, b = f"{str(a)[:12]}…", f"{str(b)[:12]}…"
            out.append(f"{word} {a!r} there, {b!r} now")
    return out
