"""Faults in a distributed extraction: the driver interrupted (resume, also across one process
and Dask), a worker process SIGKILLed mid-run, and stores or data that must not be mixed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from dask_helpers import assert_same_store, data, torch_lstm

import rnnlens
from rnnlens.distributed import held_runs
from rnnlens.extract.dask_tasks import _client_ids
from rnnlens.io.errors import StoreExistsError, StoreMismatchError
from rnnlens.io.layout import done_chunks, read_manifest

pytestmark = [
    pytest.mark.xdist_group("dask"),
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)"),
]


def _stop_after(samples: int):  # type: ignore[no-untyped-def]
    """A progress callback that interrupts the run (as Ctrl-C would) once ``samples`` are stored."""

    def progress(done: int, total: int | None) -> None:
        if done >= samples:
            raise KeyboardInterrupt

    return progress


@pytest.mark.parametrize("first, then", [("dask", "dask"), ("dask", "single"), ("single", "dask")])
def test_interrupted_run_resumes_to_the_uninterrupted_store(client, tmp_path, first, then) -> None:  # type: ignore[no-untyped-def]
    model = torch_lstm()
    x = data(30, time=8, seed=7)
    np.save(tmp_path / "x.npy", x)
    ref, store = tmp_path / "ref.zarr", tmp_path / "run.zarr"
    rnnlens.extract_to(ref, model, x, fields=None, batch_size=3)

    def run(how: str, **kw):  # type: ignore[no-untyped-def]
        extra = {"client": client} if how == "dask" else {}
        return rnnlens.extract_to(store, model, tmp_path / "x.npy", fields=None, batch_size=3, **extra, **kw)

    with pytest.raises(KeyboardInterrupt):
        run(first, progress=_stop_after(9))
    manifest = read_manifest(store)
    assert manifest is not None and not manifest["complete"]
    done = done_chunks(manifest)
    assert 3 <= len(done) < 10, manifest

    resumed = run(then)
    if then == "dask":  # every chunk recorded is kept, also those finished out of order
        assert resumed.completed_samples == 3 * len(done)
        assert resumed.chunks_traced == 10 - len(done)
    else:  # one process keeps the chunks before the first gap and recomputes the rest in order
        # (no chunk before it when Dask finished the first chunk last: then samples_done is 0)
        assert resumed.completed_samples == manifest["samples_done"]
    assert_same_store(ref, store)
    assert read_manifest(store)["complete"]


def test_dask_resume_rewrites_deleted_and_corrupt_chunks(client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = torch_lstm()
    x = data(12, time=6, seed=9)
    np.save(tmp_path / "x.npy", x)
    ref, store = tmp_path / "ref.zarr", tmp_path / "run.zarr"
    rnnlens.extract_to(ref, model, x, fields=("h",), batch_size=3)
    rnnlens.extract_to(store, model, tmp_path / "x.npy", fields=("h",), batch_size=3, client=client)
    chunks = sorted(p for p in (store / "mask" / "c").rglob("*") if p.is_file())
    chunks[1].unlink()
    h_chunks = sorted(p for p in store.rglob("c/*/*/*") if p.is_file() and "layers" in p.parts)
    raw = bytearray(h_chunks[0].read_bytes())
    raw[9] ^= 0xFF
    h_chunks[0].write_bytes(bytes(raw))
    run = rnnlens.extract_to(store, model, tmp_path / "x.npy", fields=("h",), batch_size=3, client=client)
    assert run.chunks_traced >= 2
    assert_same_store(ref, store)
    from rnnlens.io.zarr import verify_store

    assert verify_store(store)


def test_worker_killed_mid_run_loses_and_duplicates_nothing(client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = torch_lstm()
    x = data(64, time=40, seed=8)  # 32 chunks of 2: the run outlasts the kill by many tasks
    ref, store = tmp_path / "ref.zarr", tmp_path / "run.zarr"
    rnnlens.extract_to(ref, model, x, fields=None, batch_size=2)
    pids = client.run(os.getpid)
    killed: dict[str, object] = {}

    def progress(done: int, total: int | None) -> None:
        if killed or done < 8:
            return
        busy = sorted(w for w, keys in client.processing().items() if keys and w in pids)
        if not busy:
            return
        killed.update(worker=busy[0], pid=pids[busy[0]], done=done)
        os.kill(pids[busy[0]], signal.SIGKILL)  # the worker process, mid-task

    run = rnnlens.extract_to(store, model, x, fields=None, batch_size=2, client=client, progress=progress)

    assert killed, "no worker was busy to kill"
    assert killed["done"] < 64
    assert run.n_samples == 64
    assert_same_store(ref, store)
    manifest = read_manifest(store)
    assert manifest["chunks_done"] == 32 and manifest["samples_done"] == 64 and not manifest["pending"]
    client.wait_for_workers(2, timeout=180)
    assert killed["pid"] not in client.run(os.getpid).values()  # the nanny started a new process


def test_mismatched_store_or_data_is_refused(client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch

    model = torch_lstm()
    x = data(12, seed=9)
    store = tmp_path / "run.zarr"
    rnnlens.extract_to(store, model, x, fields=("h",), batch_size=4, client=client)
    before = (store / "manifest" / "zarr.json").read_bytes()

    with pytest.raises(StoreMismatchError, match="fields"):
        rnnlens.extract_to(store, model, x, fields=None, batch_size=4, client=client)
    other = torch_lstm()
    with torch.no_grad():
        other.weight_hh_l0.add_(1.0)
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(StoreMismatchError, match="weights and architecture"):
        rnnlens.extract_to(store, tmp_path / "other.pt", x, batch_size=4, client=client, unsafe=True)
    with pytest.raises(StoreExistsError, match="already holds"):
        rnnlens.extract_to(store, model, x, batch_size=4, client=client, resume=False)
    assert (store / "manifest" / "zarr.json").read_bytes() == before  # untouched

    # an interrupted run resumed with other data
    partial = tmp_path / "partial.zarr"
    with pytest.raises(KeyboardInterrupt):
        rnnlens.extract_to(partial, model, x, batch_size=4, client=client, progress=_stop_after(4))
    with pytest.raises(StoreMismatchError, match="differs from the data"):
        rnnlens.extract_to(partial, model, x[::-1].copy(), batch_size=4, client=client)
    rnnlens.extract_to(partial, model, x, batch_size=4, client=client)  # the same data resumes
    assert rnnlens.open_states(partial).complete


DRIVER = textwrap.dedent(
    """
    import sys
    import torch  # noqa: F401  (imported before saying "ready")
    from distributed import Client
    import rnnlens

    address, store, model, x = sys.argv[1:5]

    def report(done, total):
        print(f"progress {done}", flush=True)

    with Client(address) as client:
        print("ready", flush=True)
        rnnlens.extract_to(store, model, x, fields=None, batch_size=2, client=client, unsafe=True,
                           progress=report)
    print("finished", flush=True)
    """
)


def test_driver_process_sigkilled_then_resumed(cluster, client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch

    model = torch_lstm()
    torch.save(model, tmp_path / "m.pt")
    x = data(48, time=30, seed=10)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "driver.py").write_text(DRIVER)
    ref, store = tmp_path / "ref.zarr", tmp_path / "run.zarr"
    rnnlens.extract_to(ref, model, x, fields=None, batch_size=2)

    argv = [cluster.scheduler_address, str(store), str(tmp_path / "m.pt"), str(tmp_path / "x.npy")]
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "driver.py"), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    last = ""
    for line in proc.stdout:
        last = line.strip()
        if last == "finished" or (last.startswith("progress ") and int(last.split()[1]) >= 8):
            break
    proc.send_signal(signal.SIGKILL)  # the driver dies; its tasks may still be running
    proc.wait(timeout=30)
    manifest = read_manifest(store)
    assert manifest is not None and not manifest["complete"], last
    done = done_chunks(manifest)
    assert len(done) >= 4, manifest
    deadline = time.monotonic() + 60  # until the scheduler has noticed the driver is gone
    while set(client.run_on_scheduler(_client_ids)) - {"fire-and-forget"} != {client.id}:
        assert time.monotonic() < deadline, client.run_on_scheduler(_client_ids)
        time.sleep(0.2)

    run = rnnlens.extract_to(
        store, tmp_path / "m.pt", tmp_path / "x.npy", fields=None, batch_size=2, client=client, unsafe=True
    )
    assert run.completed_samples == 2 * len(done)
    assert_same_store(ref, store)
    # the killed driver's model was dropped from the workers when this run started
    assert all(tokens == [] for tokens in held_runs(client).values())
