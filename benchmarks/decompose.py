"""The cost of ``rnnlens.decompose`` on a stored layer against reading it:
``python -m benchmarks.decompose [--n 10000] [--time 50] [--units 64]``.

A PyTorch LSTM's ``c`` and gates are extracted into a Zarr store (``extract_to``); then, each
timed as the best of ``--repeats`` runs, alternating: **read** (every chunk of c and the gates
read into NumPy once, what any pass over the store pays), **attention** (``Decomposition.attention()``:
the (sample, time, time) map, streamed in chunks of 256 samples, checked at every step),
**lifetime** (``Decomposition.lifetime(0.5)``). Prints the times and their ratios to reading.
"""

from __future__ import annotations

import argparse
import tempfile
import time
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--time", type=int, default=50)
    ap.add_argument("--units", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import rnnlens

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.zarr"
        layer = _store(path, args.n, args.time, args.units)
        states = rnnlens.open_states(path)
        runs = {
            "read": lambda: _read(states, layer),
            "attention": lambda: rnnlens.decompose(states, layer).attention(),
            "lifetime": lambda: rnnlens.decompose(states, layer).lifetime(0.5),
        }
        best = {k: float("inf") for k in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t0)
    print(f"{args.n} sequences × {args.time} steps × {args.units} units (LSTM c + gates, float32)")
    for name, t in best.items():
        print(f"{name:>10}: {t:7.2f} s   {t / best['read']:5.2f}× reading")


if __name__ == "__main__":
    main()
