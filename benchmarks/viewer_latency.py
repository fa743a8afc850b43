"""Select-and-match latency on a large synthetic store: ``python -m benchmarks.viewer_latency``.

Writes a store of ``--samples`` sequences (default 100 000 × 50 steps × 32 units, 640 MB of
float32) with a pattern planted in every 1000th sequence, then times the viewer's queries
through its HTTP API (a real server thread on 127.0.0.1): a cold match (the selected units'
columns are streamed from the store chunk by chunk), the same match again (cached columns),
a unit's whole-data-set statistics, and loading one sample.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from rnnlens.testing.stores import write_store

__all__ = ["main"]


def build(path: Path, n: int, t: int, units: int) -> Path:
    def chunk(start: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(start)
        h = rng.uniform(-1.0, 0.4, size=(size, t, units)).astype(np.float32)
        for s in range(start, start + size):
            if s % 1000 == 0:
                h[s - start, 10:14, [3, 7]] = 0.9
        lengths = rng.integers(t // 2, t + 1, size=size)
        return h, np.arange(t)[None, :] < lengths[:, None]

    return write_store(path, chunk, n_samples=n, max_time=t, units=units, batch_size=1024)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--time", type=int, default=50)
    p.add_argument("--units", type=int, default=32)
    p.add_argument("--store", help="where to write the store (default: a temporary directory)")
    args = p.parse_args(argv)
    from .server import make_server

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.store or Path(tmp) / "big.zarr")
        started = time.perf_counter()
        if not (path / "zarr.json").exists():
            build(path, args.samples, args.time, args.units)
        print(f"store {path}: {args.samples} x {args.time} x {args.units}, "
              f"built in {time.perf_counter() - started:.1f} s")  # fmt: skip
        server = make_server(path)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"

        def get(query: str) -> tuple[float, dict]:  # type: ignore[type-arg]
            t0 = time.perf_counter()
            with urllib.request.urlopen(base + query) as r:
                body = json.loads(r.read())
            return 1e3 * (time.perf_counter() - t0), body

        common = "layer=lstm&field=h&direction=forward"
        match = f"/api/match?{common}&sample=0&t0=10&t1=14&threshold=0.5&k=20"
        rows: list[tuple[str, list[str]]] = [
            ("sample (5 different)", [f"/api/sample?{common}&sample={s}" for s in (54321, 7, 99999, 5, 31)]),
            ("match, cold: units {3,7} read", [match]),
            ("match, cached columns", [match] * 5),
            ("match, cold: units {1,2}, θ=0.3", [match.replace("0.5", "0.3") + "&units=1,2"]),
            ("unit stats, cached column", [f"/api/unit?{common}&unit=3&threshold=0.5"]),
            ("unit stats, cold column", [f"/api/unit?{common}&unit=11&threshold=0.5"]),
        ]
        for label, queries in rows:
            times = []
            for query in queries:
                ms, body = get(query)
                times.append(ms)
            extra = ""
            if body.get("matches"):
                top = body["matches"][0]["score"]
                extra = f"  units={body['units']} matches={len(body['matches'])} top score={top}"
            print(f"{label:32s} median {float(np.median(times)):7.1f} ms (n={len(times)}){extra}")
        print(f"load average: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
