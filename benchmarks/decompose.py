"""The cost of ``rnnlens.decompose`` on a stored layer against reading it:
``python -m benchmarks.decompose [--n 10000] [--time 50] [--units 64] [--repeats 5] [--numpy]``.

A PyTorch LSTM's ``c`` and gates are extracted into a Zarr store (``extract_to``); then, each
timed as the best of ``--repeats`` runs, alternating: **read** (every chunk of c and the gates
read into NumPy once, what any pass over the store pays), **maps** (``Decomposition.maps()``: the
(sample, time, time) attention map and the lifetimes of every write, each chunk read and checked
once — the issue's target: at most 2× reading), and each alone, **attention**
(``Decomposition.attention()``) and **lifetime** (``Decomposition.lifetime(0.5)``), each of which
reads and checks every chunk. Every chunk's writes are checked against the stored ``c`` at every
step. Prints wall-clock and CPU times (all threads: the next chunks are read and checked in other
threads) and their ratios to reading; on a shared machine the CPU ratio is the steadier one. Run
it under ``taskset -c 0`` to see the one-core cost. With numba installed (``rnnlens[fast]``) the
fused kernel of :mod:`rnnlens.analysis.decompose_fused` runs (the first ``maps`` call, which
loads the cached kernel or compiles it, is timed apart); ``--numpy`` times the NumPy route.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _store(path: Path, n: int, steps: int, units: int) -> str:
    import torch

    import rnnlens

    torch.manual_seed(0)
    net = torch.nn.LSTM(16, units, batch_first=True)
    x = np.random.default_rng(0).normal(size=(n, steps, 16)).astype("float32")
    rnnlens.extract_to(path, net, x, fields=("c", "gates"), batch_size=512)
    return "lstm"


def _read(states, layer: str) -> None:  # type: ignore[no-untyped-def]
    """Every chunk of c and the gates, read once, a stored chunk of samples at a time."""
    ls = states[layer]
    n, chunk = ls.c.shape[0], ls.c.chunks[0]
    for start in range(0, n, chunk):
        np.asarray(ls.c[start : start + chunk])
        np.asarray(ls.gates.array[start : start + chunk])


def best_of(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Each run's best wall-clock and best CPU time (seconds) over ``repeats`` rounds, alternating."""
    wall = {k: float("inf") for k in runs}
    cpu = {k: float("inf") for k in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name] = min(wall[name], time.perf_counter() - t0)
            cpu[name] = min(cpu[name], time.process_time() - c0)
    return {k: (wall[k], cpu[k]) for k in runs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--time", type=int, default=50)
    ap.add_argument("--units", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--numpy", action="store_true", help="the NumPy route (no numba kernel)")
    args = ap.parse_args()
    import rnnlens
    from rnnlens.analysis import decompose_fused

    if args.numpy:
        decompose_fused.kernel = lambda: None
    route = "numba kernel" if decompose_fused.kernel() is not None else "NumPy route"

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.zarr"
        layer = _store(path, args.n, args.time, args.units)
        states = rnnlens.open_states(path)
        t0 = time.perf_counter()
        rnnlens.decompose(states, layer).maps(fraction=0.5)
        first = time.perf_counter() - t0
        times = best_of(
            {
                "read": lambda: _read(states, layer),
                "maps": lambda: rnnlens.decompose(states, layer).maps(fraction=0.5),
                "attention": lambda: rnnlens.decompose(states, layer).attention(),
                "lifetime": lambda: rnnlens.decompose(states, layer).lifetime(0.5),
            },
            args.repeats,
        )
    print(f"{args.n} sequences × {args.time} steps × {args.units} units (LSTM c + gates, float32), "
          f"best of {args.repeats}; {route} (first maps call: {first:.2f} s)")  # fmt: skip
    read_wall, read_cpu = times["read"]
    for name, (wall, cpu) in times.items():
        print(f"{name:>10}: wall {wall:6.2f} s = {wall / read_wall:5.2f}× reading   "
              f"cpu {cpu:6.2f} s = {cpu / read_cpu:5.2f}× reading")  # fmt: skip
    wall, cpu = times["maps"]
    print(f"attention map + lifetimes (maps): {wall / read_wall:.2f}× reading (wall), "
          f"{cpu / read_cpu:.2f}× (cpu); target ≤ 2×")  # fmt: skip


if __name__ == "__main__":
    main()
