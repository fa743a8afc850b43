"""Distributed extraction on a LocalCluster (2 worker processes) writes the same store, bit for
bit, as one process: in-memory and file models, PyTorch and Keras, every input kind."""

from __future__ import annotations

import numpy as np
import pytest
from dask_helpers import assert_same_store, data, keras_model, torch_lstm

import rnnlens
from rnnlens.cli import main
from rnnlens.distributed import DistributedRun, held_runs
from rnnlens.errors import InputError

pytestmark = pytest.mark.xdist_group("dask")


def test_in_memory_torch_model_equals_single_process_and_loads_once_per_worker(client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = torch_lstm()
    x = data(23)
    np.save(tmp_path / "x.npy", x)
    rnnlens.extract_to(tmp_path / "ref.zarr", model, x, fields=None, batch_size=4)

    seen = []
    run = rnnlens.extract_to(
        tmp_path / "dask.zarr",
        model,
        tmp_path / "x.npy",
        fields=None,
        batch_size=4,
        client=client,
        progress=lambda done, total: seen.append((done, total)),
    )

    assert isinstance(run, DistributedRun) and run.closed and run.n_samples == 23
    assert_same_store(tmp_path / "ref.zarr", tmp_path / "dask.zarr")
    # 6 chunks over 2 workers: each loaded the model once, not once per chunk
    stats = run.worker_stats
    assert len(stats) == 2, stats
    assert all(s["loads"] == 1 for s in stats.values()), stats
    assert sum(s["chunks"] for s in stats.values()) == run.chunks_traced == 6
    assert max(s["chunks"] for s in stats.values()) > 1, stats
    # the probe's trace of the first chunk is written by that chunk's task, unless Dask moved
    # the task to the other worker (allowed, then traced again there)
    assert 6 <= sum(s["traces"] for s in stats.values()) <= 7, stats
    assert seen[0] == (0, 23) and seen[-1] == (23, 23)
    assert sorted(d for d, _ in seen) == [d for d, _ in seen]
    assert all(run.run_id not in tokens for tokens in held_runs(client).values())  # models released
    states = rnnlens.open_states(tmp_path / "dask.zarr")
    assert states.complete and states["lstm.l1"].forward.c.shape == (23, 6, 5)


def test_torch_model_file_list_of_npy_files_and_zarr_input(client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch
    import zarr

    model = torch_lstm()
    torch.save(model, tmp_path / "m.pt")  # a pickled module: opened by each worker with unsafe=True
    x = data(19, time=5, seed=1)
    lengths = np.random.default_rng(2).integers(1, 6, size=19)
    np.save(tmp_path / "a.npy", x[:7])  # chunk 1 (samples 4..7) spans both files
    np.save(tmp_path / "b.npy", x[7:])
    np.save(tmp_path / "lengths.npy", lengths)
    z = zarr.create_array(str(tmp_path / "x.zarr"), shape=x.shape, chunks=(5, 5, 3), dtype="float32")
    z[...] = x
    ref = tmp_path / "ref.zarr"
    kwargs = dict(fields=("h", "c"), batch_size=4, max_time=7)  # padded in time: NaN, mask False
    rnnlens.extract_to(ref, model, x, lengths=lengths, **kwargs)

    files = [tmp_path / "a.npy", tmp_path / "b.npy"]
    rnnlens.extract_to(tmp_path / "single.zarr", model, files, lengths=lengths, **kwargs)
    assert_same_store(ref, tmp_path / "single.zarr")  # the same list in one process

    run = rnnlens.extract_to(
        tmp_path / "files.zarr",
        tmp_path / "m.pt",
        files,
        lengths=tmp_path / "lengths.npy",
        client=client,
        unsafe=True,
        **kwargs,
    )
    assert all(s["loads"] == 1 for s in run.worker_stats.values())
    assert_same_store(ref, tmp_path / "files.zarr")

    rnnlens.extract_to(tmp_path / "zarr.zarr", model, z, lengths=lengths, client=client, **kwargs)
    assert_same_store(ref, tmp_path / "zarr.zarr")
    stored = rnnlens.open_states(tmp_path / "zarr.zarr")
    assert stored.lengths[:].tolist() == lengths.tolist()
    assert np.isnan(stored["lstm.l0"].forward.h[:, 5:]).all()


@pytest.mark.slow  # each worker process imports TensorFlow and compiles the model twice
def test_keras_model_file_and_in_memory_model(client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("keras")
    model = keras_model()
    model.save(tmp_path / "m.keras")
    x = data(14, seed=4)
    lengths = np.random.default_rng(5).integers(1, 7, size=14)
    ref = tmp_path / "ref.zarr"
    rnnlens.extract_to(ref, tmp_path / "m.keras", x, fields=None, batch_size=4, lengths=lengths)

    run = rnnlens.extract_to(
        tmp_path / "file.zarr",
        tmp_path / "m.keras",
        x,
        fields=None,
        batch_size=4,
        lengths=lengths,
        client=client,
    )
    assert_same_store(ref, tmp_path / "file.zarr")
    assert sum(s["loads"] for s in run.worker_stats.values()) <= 2
    # the in-memory model travels pickled (a .keras archive), once per worker
    rnnlens.extract_to(
        tmp_path / "mem.zarr", model, x, fields=None, batch_size=4, lengths=lengths, client=client
    )
    assert_same_store(ref, tmp_path / "mem.zarr")


def test_cli_scheduler(cluster, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import torch

    model = torch_lstm()
    torch.save(model, tmp_path / "m.pt")
    x = data(10, seed=6)
    np.save(tmp_path / "a.npy", x[:6])
    np.save(tmp_path / "b.npy", x[6:])
    rnnlens.extract_to(tmp_path / "ref.zarr", model, x, fields=("h", "gates"), batch_size=4)
    argv = ["extract", str(tmp_path / "m.pt"), str(tmp_path / "a.npy"), str(tmp_path / "b.npy")]
    argv += ["-o", str(tmp_path / "cli.zarr"), "--fields", "h,gates", "--batch-size", "4", "--unsafe"]
    assert main([*argv, "--scheduler", cluster.scheduler_address]) == 0
    assert_same_store(tmp_path / "ref.zarr", tmp_path / "cli.zarr")
    assert "2 workers" in capsys.readouterr().err


def test_bad_input_is_refused_clearly(client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = torch_lstm()
    with pytest.raises(InputError, match="needs data="):
        rnnlens.extract_to(tmp_path / "a.zarr", model, client=client)
    with pytest.raises(InputError, match="cannot be split"):
        rnnlens.extract_to(tmp_path / "b.zarr", model, [data(4), data(4)], client=client)
    with pytest.raises(InputError, match=r"dask\.distributed\.Client"):
        rnnlens.extract_to(tmp_path / "c.zarr", model, data(4), client="tcp://127.0.0.1:8786")
    with pytest.raises(FileNotFoundError, match="No model file"):
        rnnlens.extract_to(tmp_path / "d.zarr", tmp_path / "missing.pt", data(4), client=client)
    assert not any(tmp_path.iterdir())  # nothing written
