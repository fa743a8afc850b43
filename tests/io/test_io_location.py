"""Where a store lives (rnnlens.io.location): local paths keep their meaning, URLs go to fsspec,
and a filesystem that cannot create a file only-if-absent gets no store rather than a lock two
writers could both take. (Object stores proper: tests/s3, against a real S3 server.)"""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rnnlens
from rnnlens.errors import StoreError
from rnnlens.io.location import Location

fsspec = pytest.importorskip("fsspec")


def test_paths_and_urls(tmp_path: Path) -> None:
    local = Location(tmp_path / "run.zarr")
    assert local.local and local.path == tmp_path / "run.zarr" and str(local) == str(tmp_path / "run.zarr")
    assert Location(f"file://{tmp_path}/run.zarr") == local
    assert Location.of(local) is local
    remote = Location("s3://bucket/run.zarr", {"anon": True})
    assert not remote.local and str(remote) == "s3://bucket/run.zarr"
    again = pickle.loads(pickle.dumps(remote))  # how Dask tasks carry it
    assert again == remote and again.storage_options == {"anon": True}
    assert remote.sibling(".lock").url == "s3://bucket/run.zarr.lock"
    with pytest.raises(StoreError, match="storage_options are for stores at URLs"):
        Location(tmp_path / "run.zarr", {"anon": True})


def test_the_lock_refuses_a_filesystem_without_exclusive_create(fmodel: Any, fdata: np.ndarray) -> None:
    from fsspec.implementations.memory import MemoryFileSystem

    class NoExclusive(MemoryFileSystem):  # type: ignore[misc]
        protocol = "noexclusive"

        def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
            if "x" in mode:
                raise ValueError(f"mode {mode!r} is not supported")
            return super()._open(path, mode, **kwargs)

    fsspec.register_implementation("noexclusive", NoExclusive, clobber=True)
    url = f"noexclusive://rnnlens-{uuid.uuid4().hex[:8]}/run.zarr"
    with pytest.raises(StoreError, match="cannot create a file only if it is absent"):
        rnnlens.extract_to(url, fmodel, fdata, batch_size=8)
    assert not Location(url).exists()  # refused before anything was written


def test_an_unknown_protocol_is_one_clear_error(fmodel: Any, fdata: np.ndarray) -> None:
    with pytest.raises((StoreError, rnnlens.errors.MissingDependencyError), match="nosuchfs"):
        rnnlens.open_states("nosuchfs://bucket/run.zarr")
