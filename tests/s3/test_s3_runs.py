"""Runs that write to an S3-compatible object store (a real moto server): killed and resumed,
spread over a Dask cluster, and driven from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cloud_helpers import MODEL, data, model

import rnnlens
from rnnlens.cli import main
from rnnlens.io.layout import read_manifest
from rnnlens.io.location import Location
from store_helpers import assert_same_store

pytest.importorskip("torch")

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import rnnlens

    url, data = sys.argv[1:3]
    torch.manual_seed(3)
    model = torch.nn.LSTM(3, 5, num_layers=2, batch_first=True)

    def report(done, total):
        if done >= 16:  # killed mid-run: no cleanup, the lock left behind
            os.kill(os.getpid(), signal.SIGKILL)

    rnnlens.extract_to(url, model, data, fields=None, batch_size=4, progress=report)
    """
)


def test_a_killed_run_resumes_to_the_uninterrupted_store(tmp_path: Path, bucket: str, s3_env: Any) -> None:
    x = data(40)
    np.save(tmp_path / "x.npy", x)
    ref = tmp_path / "ref.zarr"
    rnnlens.extract_to(ref, model(), x, fields=None, batch_size=4)
    url = f"s3://{bucket}/killed.zarr"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, url, str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -9, child.stderr
    loc = Location(url)
    manifest = read_manifest(loc)
    assert manifest is not None and not manifest["complete"] and manifest["chunks_done"] < 10
    assert loc.sibling(".lock").exists()  # the dead run's lock, taken over below

    run = rnnlens.extract_to(url, model(), tmp_path / "x.npy", fields=None, batch_size=4)
    assert run.completed_samples == manifest["samples_done"]
    assert_same_store(ref, loc, complete=True)
    assert not loc.sibling(".lock").exists()


@pytest.mark.xdist_group("dask")
def test_a_dask_run_writes_to_the_bucket_and_ranks_from_it(
    tmp_path: Path, bucket: str, storage_options: dict[str, Any]
) -> None:
    from distributed import Client, LocalCluster

    x = data(30, seed=2)
    np.save(tmp_path / "x.npy", x)
    ref = tmp_path / "ref.zarr"
    rnnlens.extract_to(ref, model(), x, fields=None, batch_size=4)
    url = f"s3://{bucket}/dask.zarr"
    feature = np.random.default_rng(1).normal(size=x.shape[:2])
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        run = rnnlens.extract_to(
            url,
            model(),
            tmp_path / "x.npy",
            fields=None,
            batch_size=4,
            client=client,
            storage_options=storage_options,
        )
        assert sum(s["chunks"] for s in run.worker_stats.values()) == 8
        stored = rnnlens.open_states(url, storage_options=storage_options)
        spread = rnnlens.rank_units(stored, feature, layer="lstm.l1", permutations=20, client=client)
    assert_same_store(ref, Location(url, storage_options), complete=True)
    here = rnnlens.rank_units(rnnlens.open_states(ref), feature, layer="lstm.l1", permutations=20)
    np.testing.assert_array_equal(spread.scores, here.scores)


def test_the_cli_extracts_verifies_exports_plots_and_views_a_bucket_store(
    tmp_path: Path, bucket: str, storage_options: dict[str, Any], monkeypatch: Any, capsys: Any
) -> None:
    import torch

    (tmp_path / "s3net.py").write_text(MODEL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    torch.save(importlib.import_module("s3net").Net().state_dict(), tmp_path / "net.pt")
    np.save(tmp_path / "x.npy", data(12))
    url = f"s3://{bucket}/cli.zarr"
    opts = ["--storage-options", json.dumps(storage_options)]
    extract = ["extract", "net.pt", "x.npy", "--module", "s3net:Net", "-o", url, "--fields", "h,c"]
    assert main([*extract, "--batch-size", "4", *opts]) == 0
    assert main(["verify", url, *opts]) == 0
    assert "ok, " in capsys.readouterr().err
    assert main(["export", url, "-o", "states.npz", *opts]) == 0
    exported = np.load(tmp_path / "states.npz")
    stored = rnnlens.open_states(url, storage_options=storage_options)
    np.testing.assert_array_equal(exported["rnn.l1_forward_c"], stored["rnn.l1"].c[:])
    assert main(["plot", url, "--layer", "rnn.l0", "-o", "h.png", *opts]) == 0
    assert (tmp_path / "h.png").stat().st_size > 1000
    capsys.readouterr()

    # bad input: one line, exit 2, no traceback
    assert main(["verify", f"s3://{bucket}/nothing.zarr", *opts]) == 2
    assert main(["verify", url, "--storage-options", "{bad"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "No state store" in err[0] and "not valid JSON" in err[1], err
    assert main(["verify", "local.zarr", *opts]) == 2
    assert "--storage-options are for stores at URLs" in capsys.readouterr().err

    view = subprocess.Popen(
        [sys.executable, "-m", "rnnlens", "view", url, "--no-browser", *opts],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert view.stdout is not None
        page = view.stdout.readline().strip()
        assert page.startswith("http://127.0.0.1:"), view.stderr.read() if view.stderr else ""
        meta = json.load(urllib.request.urlopen(page + "api/meta", timeout=30))
        assert meta["n_samples"] == 12 and meta["store"] == "cli.zarr"
    finally:
        view.terminate()
        view.wait(timeout=30)


def test_a_recording_streams_its_states_into_the_bucket(bucket: str, storage_options: dict[str, Any]) -> None:
    import torch

    torch.manual_seed(0)
    rnn = torch.nn.GRU(3, 4, batch_first=True).eval()
    x = torch.randn(2, 30, 3)

    def decode(**kw: Any) -> Any:
        with torch.no_grad(), rnnlens.record(rnn, **kw) as rec:
            h = None
            for t in range(30):
                _, h = rnn(x[:, t : t + 1], h)
        return rec

    held = decode()
    url = f"s3://{bucket}/rec"
    streamed = decode(to=url, flush_every=7, chunk_steps=8, storage_options=storage_options)
    assert streamed.stores == {"gru": f"{url}/gru.zarr"}
    np.testing.assert_array_equal(streamed.states["gru"].h[:], held.states["gru"].h)
    # gates are rebuilt per flushed segment: GEMMs over other row counts, the last bits may differ
    np.testing.assert_allclose(streamed.states["gru"].gates["z"][:], held.states["gru"].gates["z"], atol=1e-6)
    assert rnnlens.open_states(f"{url}/gru.zarr", storage_options=storage_options).complete
