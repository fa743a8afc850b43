"""One small Dask cluster for the distributed-extraction tests: 2 worker processes, 1 thread
each, started once per session (worker processes import torch / TensorFlow on first use)."""

from __future__ import annotations

import pytest

pytest.importorskip("zarr")
pytest.importorskip("distributed")
pytest.importorskip("torch")


@pytest.fixture(scope="session")
def cluster():  # type: ignore[no-untyped-def]
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        yield c


@pytest.fixture
def client(cluster):  # type: ignore[no-untyped-def]
    """A client of the shared cluster, with both workers up (a test may have killed one)."""
    from distributed import Client

    with Client(cluster) as c:
        c.wait_for_workers(2, timeout=180)
        yield c
