"""Distributed extraction on local Dask clusters against single-process streaming:
``python -m benchmarks.dask_suite [--quick]``.

Cases (interleaved timing, see :mod:`benchmarks.harness`), all extracting the same ``.npy``
file into a Zarr store with the same model, chunks and fields:

* ``extract_to (1 process)``: single-process streaming (the baseline, ratio 1.00);
* ``dask, 1 worker`` / ``dask, 2 workers``: ``extract_to(..., client=)`` on a
  ``LocalCluster`` of 1 or 2 worker processes with one thread each (each worker's framework
  still uses every core for one trace).

A Dask run's time includes its fixed costs: pickling the model and loading it on each worker,
compiling the trace there, the probe chunk, and the resume bookkeeping. They are paid per run
and amortise over large data; on a machine with few cores the workers compete with each other
(and with the client) for the same cores, so 2 workers can be slower than 1 there.
``SUITES`` plugs the cases into ``python -m benchmarks``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import atexit
import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .harness import Case, format_table, interleaved
from .streaming import BATCH, FIELDS, LAYERS, TIME, UNITS, model, write_npy

N = 2048  # 8 chunks of 256
N_QUICK = 1024


def _cluster(n_workers: int) -> Any:
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = Client(cluster)
    atexit.register(_close, client, cluster)
    return client


def _close(client: Any, cluster: Any) -> None:
    with contextlib.suppress(Exception):
        client.close()
        cluster.close()


def cases(fields: tuple[str, ...] = FIELDS, n: int = N) -> list[Case]:
    import rnnlens

    m = model()
    tmp = Path(tempfile.mkdtemp(prefix="rnnlens-dask-bench-"))
    write_npy(tmp / "x.npy", n)
    m.save(tmp / "m.keras")
    one, two = _cluster(1), _cluster(2)
    label = ",".join(fields)

    def single() -> None:
        rnnlens.extract_to(
            tmp / "single.zarr", m, tmp / "x.npy", fields=fields, batch_size=BATCH, overwrite=True
        )

    def on(client: Any, name: str) -> Callable[[], None]:
        def run() -> None:
            rnnlens.extract_to(
                tmp / f"{name}.zarr",
                tmp / "m.keras",
                tmp / "x.npy",
                fields=fields,
                batch_size=BATCH,
                overwrite=True,
                client=client,
            )

        return run

    return [
        Case(f"extract_to, 1 process ({label})", single),
        Case(f"dask, 1 worker ({label})", on(one, "one"), "model file loaded once per worker per run"),
        Case(f"dask, 2 workers ({label})", on(two, "two"), "2 worker processes share the machine's cores"),
    ]


SUITES: dict[str, Callable[[], list[Case]]] = {"dask": cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"{N_QUICK} sequences, 2 rounds")
    parser.add_argument("--fields", default=",".join(FIELDS), help="comma-separated fields")
    args = parser.parse_args()
    n = N_QUICK if args.quick else N
    fields = tuple(args.fields.split(","))
    results = interleaved(cases(fields, n), repeats=2 if args.quick else 5)
    title = f"{n} sequences × {TIME} steps, {LAYERS}×LSTM({UNITS}), batch {BATCH}, {os.cpu_count()} cores"
    print(format_table(title, results))
    base = results[0].median
    for r in results:
        print(f"{r.name:<34} {n / r.median:8.0f} sequences/s  ({base / r.median:.2f}× single-process)")


if __name__ == "__main__":
    main()
