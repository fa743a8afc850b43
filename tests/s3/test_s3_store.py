"""Stores on an S3-compatible object store (a real moto server over HTTP, see conftest): the
same bytes as a local store, integrity checks that see deleted and damaged objects, one
writer at a time, and the in-memory fsspec filesystem."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cloud_helpers import data, model

import rnnlens
from rnnlens.errors import StoreError, StoreLockedError
from rnnlens.extract.lock import StoreLock, _pid_namespace
from rnnlens.io.location import Location
from rnnlens.io.zarr import verify_store
from store_helpers import assert_same_store

pytest.importorskip("torch")


def _local_reference(tmp_path: Path, x: np.ndarray) -> Path:
    ref = tmp_path / "ref.zarr"
    rnnlens.extract_to(ref, model(), x, fields=None, batch_size=4)
    return ref


def test_extract_to_s3_writes_the_local_store_bit_for_bit(
    tmp_path: Path, bucket: str, storage_options: dict[str, Any]
) -> None:
    x = data(22)
    ref = _local_reference(tmp_path, x)
    url = f"s3://{bucket}/runs/run.zarr"
    run = rnnlens.extract_to(url, model(), x, fields=None, batch_size=4, storage_options=storage_options)
    assert run.path == url and run.n_samples == 22
    assert_same_store(ref, Location(url, storage_options), complete=True)

    states = rnnlens.open_states(url, storage_options=storage_options)
    assert states.path == url and states.complete and url in repr(states)
    local = rnnlens.open_states(ref)
    np.testing.assert_array_equal(states["lstm.l1"].gates["f"][3:9], local["lstm.l1"].gates["f"][3:9])
    np.testing.assert_array_equal(states["lstm.l0"].last("c"), local["lstm.l0"].last("c"))
    assert verify_store(url, storage_options=storage_options) == verify_store(ref)
    # xarray reads the bucket's store with named dimensions, as it reads a local one
    import xarray as xr

    tree = xr.open_datatree(states.location.zarr_store(read_only=True), engine="zarr", consolidated=False)
    np.testing.assert_array_equal(tree["layers/lstm.l0/forward"]["h"].values, local["lstm.l0"].h[:])


def test_credentials_and_endpoint_from_the_environment(tmp_path: Path, bucket: str, s3_env: Any) -> None:
    x = data(9)
    ref = _local_reference(tmp_path, x)
    url = f"s3://{bucket}/env.zarr"
    rnnlens.extract_to(url, model(), x, fields=None, batch_size=4)
    assert_same_store(ref, Location(url), complete=True)
    assert rnnlens.open_states(url).n_samples == 9


def test_memory_filesystem_store(tmp_path: Path) -> None:
    x = data(10)
    ref = _local_reference(tmp_path, x)
    url = f"memory://rnnlens-{uuid.uuid4().hex[:8]}/run.zarr"
    loc = Location(url)
    try:
        rnnlens.extract_to(url, model(), x, fields=None, batch_size=4)
        assert_same_store(ref, loc, complete=True)
        assert not loc.sibling(".lock").exists()  # released
    finally:
        loc.remove()


def test_a_deleted_or_damaged_object_is_reported_then_rewritten_on_resume(
    tmp_path: Path, bucket: str, storage_options: dict[str, Any]
) -> None:
    x = data(20)
    ref = _local_reference(tmp_path, x)
    url = f"s3://{bucket}/run.zarr"
    kw: dict[str, Any] = {"fields": None, "batch_size": 4, "storage_options": storage_options}
    rnnlens.extract_to(url, model(), x, **kw)
    loc = Location(url, storage_options)
    chunk = loc.key("layers/lstm.l1/forward/c/c/2/0/0")
    loc.fs.rm_file(chunk)
    with pytest.raises(StoreError, match="missing 1 of its 5 chunks"):
        rnnlens.open_states(url, storage_options=storage_options)
    rnnlens.extract_to(url, model(), x, **kw)  # resuming rewrites the missing chunk
    assert_same_store(ref, loc, complete=True)

    gates = loc.key("layers/lstm.l0/forward/gates/c/1/0/0/0")
    raw = bytearray(loc.fs.cat_file(gates))
    raw[40] ^= 0xFF
    loc.fs.pipe_file(gates, bytes(raw))
    with pytest.raises(StoreError, match=r"chunk 1 of array 'layers/lstm\.l0/forward/gates'"):
        verify_store(url, storage_options=storage_options)
    rnnlens.extract_to(url, model(), x, **kw)
    assert_same_store(ref, loc, complete=True)
    verify_store(url, storage_options=storage_options)


def test_one_writer_at_a_time(bucket: str, storage_options: dict[str, Any]) -> None:
    url = f"s3://{bucket}/locked.zarr"
    loc = Location(url, storage_options)
    lock = loc.sibling(".lock")
    with StoreLock(loc):
        assert json.loads(lock.read_bytes() or b"{}")["pid"] == os.getpid()
        with pytest.raises(StoreLockedError, match="in use by another extraction"):
            rnnlens.extract_to(url, model(), data(4), storage_options=storage_options)
    assert not lock.exists()

    # many takers at the same instant: the exclusive create lets exactly one in
    barrier, won, refused = threading.Barrier(6), [], []

    def take() -> None:
        barrier.wait()
        try:
            won.append(StoreLock(Location(url, storage_options)).acquire())
        except StoreLockedError:
            refused.append(1)

    threads = [threading.Thread(target=take) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 5
    won[0].release()
    assert not lock.exists()


def test_a_dead_runs_lock_is_taken_over_and_another_hosts_is_not(
    tmp_path: Path, bucket: str, storage_options: dict[str, Any]
) -> None:
    url = f"s3://{bucket}/stale.zarr"
    loc = Location(url, storage_options)
    lock = loc.sibling(".lock")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead = {"pid": int(gone.stdout), "host": socket.gethostname(), "pidns": _pid_namespace(), "started": 1.5}
    loc.fs.pipe_file(lock.root, json.dumps(dead).encode())
    x = data(8)
    rnnlens.extract_to(url, model(), x, batch_size=4, storage_options=storage_options)
    assert not lock.exists() and not loc.fs.glob(f"{lock.root}*")  # the lock and its marker are gone

    elsewhere = {**dead, "host": "another-machine"}
    loc.fs.pipe_file(lock.root, json.dumps(elsewhere).encode())
    with pytest.raises(StoreLockedError, match="another-machine"):
        rnnlens.extract_to(url, model(), x, batch_size=4, storage_options=storage_options)


def test_an_existing_bucket_store_is_refused_replaced_or_left_alone_as_locally(
    tmp_path: Path, bucket: str, storage_options: dict[str, Any]
) -> None:
    from rnnlens.errors import StoreExistsError, StoreMismatchError

    x = data(8)
    url = f"s3://{bucket}/again.zarr"
    kw: dict[str, Any] = {"batch_size": 4, "storage_options": storage_options}
    rnnlens.extract_to(url, model(), x, **kw)
    with pytest.raises(StoreMismatchError, match="fields"):
        rnnlens.extract_to(url, model(), x, fields=("h", "c"), **kw)
    rnnlens.extract_to(url, model(), x, fields=("h", "c"), overwrite=True, **kw)
    assert "c" in rnnlens.open_states(url, storage_options=storage_options)["lstm.l0"].forward.fields

    loc = Location(f"s3://{bucket}/notes", storage_options)  # a prefix holding something else
    loc.fs.pipe_file(loc.key("readme.txt"), b"not a store")
    with pytest.raises(StoreExistsError, match="not a resumable rnnlens store"):
        rnnlens.extract_to(loc.url, model(), x, **kw)
    with pytest.raises(StoreExistsError, match="not a Zarr store; refusing to delete it"):
        rnnlens.extract_to(loc.url, model(), x, overwrite=True, **kw)
    assert loc.read_bytes("readme.txt") == b"not a store"
