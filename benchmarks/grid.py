"""PyTorch models of every size: ``nn.LSTM`` / ``nn.GRU`` stacks over a grid of shapes (batch
1–512, time 20–1000, hidden 32–512, 1–3 layers) and an ``nn.LSTMCell`` Python loop, each with
the plain forward pass (``torch.inference_mode``, the floor), ``rnnlens.trace`` for ``h`` alone
and for every field, and the hand loop a careful user writes for every field (the peer).

Per shape the four cases run interleaved (:func:`benchmarks.harness.interleaved`), each timed
sample repeating its call until it lasts ~20 ms (small shapes take a fraction of a millisecond
per call), and the ratios to the forward pass are medians of the rounds. The fixed cost of a
``trace`` call is ``trace(h) - forward`` on the smallest shape (batch 1, 20 steps, hidden 32):
argument checks, the recording set-up, conversion and assembly.

``python -m benchmarks --only grid`` runs the default diagonal (9 shapes + the cell loop, a few
minutes on 2 cores); ``python -m benchmarks --only grid --full`` runs the whole product.
On a machine other processes load, ``RNNLENS_BENCH_THREADS=1 RNNLENS_BENCH_CLOCK=cpu`` runs
PyTorch on one thread and times CPU time (``time.process_time``) instead of wall time: two
OpenMP threads competing with other processes for two cores make wall times meaningless.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .harness import Case, interleaved
from .torch_suite import hand_loop, hand_lstm_layer

FEATURES = 32


@dataclass(frozen=True)
class Shape:
    kind: str  # "lstm", "gru" or "lstmcell" (a Python loop over nn.LSTMCell)
    batch: int
    steps: int
    hidden: int
    layers: int = 1

    @property
    def label(self) -> str:
        name = "LSTMCell loop" if self.kind == "lstmcell" else f"{self.layers}x{self.kind.upper()}"
        return f"{name}({self.hidden}) b{self.batch} T{self.steps}"


#: the default run: a diagonal through the grid, small to large (the smallest first: fixed cost)
DIAGONAL = [
    Shape("lstm", 1, 20, 32),
    Shape("lstm", 8, 50, 64),
    Shape("gru", 16, 100, 64),
    Shape("lstm", 64, 100, 64, 2),
    Shape("gru", 64, 200, 128, 2),
    Shape("lstm", 32, 1000, 128),
    Shape("lstm", 512, 100, 128, 3),
    Shape("gru", 256, 50, 512, 1),
    Shape("lstm", 64, 100, 512),
    Shape("lstmcell", 64, 100, 64),
]


def full_grid() -> list[Shape]:
    """Every combination (long: the large ones take seconds per call)."""
    shapes = [
        Shape(kind, b, t, h, n)
        for kind, b, t, h, n in itertools.product(
            ("lstm", "gru"), (1, 8, 64, 512), (20, 100, 1000), (32, 128, 512), (1, 3)
        )
    ]
    return [DIAGONAL[0], *[s for s in shapes if s != DIAGONAL[0]], Shape("lstmcell", 64, 100, 64)]


class CellLoop:
    """A model that runs ``nn.LSTMCell`` over time in Python (built lazily: torch is optional)."""

    @staticmethod
    def make(hidden: int) -> Any:
        import torch

        class Loop(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.cell = torch.nn.LSTMCell(FEATURES, hidden)

            def forward(self, x: Any) -> Any:
                h = c = x.new_zeros(x.shape[0], hidden)
                out = []
                for t in range(x.shape[1]):
                    h, c = self.cell(x[:, t], (h, c))
                    out.append(h)
                return torch.stack(out, 1)

        return Loop()


def hand_gru(gru: Any, x: Any) -> Callable[[], Any]:
    """The GRU counterpart of :func:`benchmarks.torch_suite.hand_loop`: per layer one ``addmm`` for
    every step's input projection, per step one ``addmm`` of the recurrent part, in-place
    activations, ``h`` written into a preallocated buffer; returns h, r, z and n of every step."""
    import torch

    weights = []
    for k in range(gru.num_layers):
        w_ih, w_hh = getattr(gru, f"weight_ih_l{k}").detach(), getattr(gru, f"weight_hh_l{k}").detach()
        b_ih, b_hh = getattr(gru, f"bias_ih_l{k}").detach(), getattr(gru, f"bias_hh_l{k}").detach()
        weights.append((w_ih.t(), w_hh.t().contiguous(), b_ih, b_hh))
    hid = gru.hidden_size

    def run() -> Any:
        with torch.inference_mode():
            seq, n, steps = x.transpose(0, 1), x.shape[0], x.shape[1]
            outs = []
            for w_ih_t, w_hh_t, b_ih, b_hh in weights:
                gi = torch.addmm(b_ih, seq.reshape(steps * n, -1), w_ih_t).view(steps, n, 3 * hid)
                h_buf = x.new_empty(steps, n, hid)
                gh = x.new_empty(n, 3 * hid)
                h = x.new_zeros(n, hid)
                for t in range(steps):
                    torch.addmm(b_hh, h, w_hh_t, out=gh)
                    g = gi[t]
                    rz = g[:, : 2 * hid].add_(gh[:, : 2 * hid]).sigmoid_()
                    r, z = rz.unsafe_chunk(2, 1)
                    nn = g[:, 2 * hid :].addcmul_(r, gh[:, 2 * hid :]).tanh_()
                    h = torch.sub(h, nn, out=h_buf[t]).mul_(z).add_(nn)
                outs.append((h_buf, gi))
                seq = h_buf
            return outs

    return run


def hand_cell(loop: Any, x: Any) -> Callable[[], Any]:
    """The cell loop by hand, every field: the model's own loop with each step's gates computed
    explicitly from the cell's weights (one ``addmm`` for the input part of every step, one per
    step for the recurrent part), c and h written into preallocated buffers."""
    import torch

    cell = loop.cell
    w_ih_t, w_hh_t = cell.weight_ih.detach().t(), cell.weight_hh.detach().t().contiguous()
    b = (cell.bias_ih + cell.bias_hh).detach()
    hid = cell.hidden_size

    def run() -> Any:
        with torch.inference_mode():
            return hand_lstm_layer(x.transpose(0, 1), w_ih_t, w_hh_t, b, hid)

    return run


def _model(shape: Shape) -> tuple[Any, Any, Callable[[], Any]]:
    import torch

    torch.manual_seed(0)
    x = torch.from_numpy(
        np.random.default_rng(0).normal(size=(shape.batch, shape.steps, FEATURES)).astype("float32")
    )
    if shape.kind == "lstmcell":
        model = CellLoop.make(shape.hidden).eval()
        return model, x, hand_cell(model, x)
    cls = torch.nn.LSTM if shape.kind == "lstm" else torch.nn.GRU
    model = cls(FEATURES, shape.hidden, num_layers=shape.layers, batch_first=True).eval()
    return model, x, (hand_loop if shape.kind == "lstm" else hand_gru)(model, x)


def _repeated(fn: Callable[[], Any], k: int) -> Callable[[], Any]:
    def run() -> Any:
        for _ in range(k - 1):
            fn()
        return fn()

    return run


def _suite() -> list[Case]:
    raise NotImplementedError("the grid runs through benchmarks.grid.main (one group per shape)")


#: ``python -m benchmarks --only grid`` (run by :func:`main`, one interleaved group per shape)
SUITES: dict[str, Callable[[], list[Case]]] = {"grid": _suite}


def shape_cases(shape: Shape, clock: Callable[[], float] = time.perf_counter) -> tuple[list[Case], int]:
    """The four cases of one shape, each repeating its call ``k`` times per timed sample."""
    import torch

    import rnnlens

    model, x, hand = _model(shape)

    def forward() -> Any:
        with torch.inference_mode():
            return model(x)

    forward()
    once = float("inf")
    for _ in range(3):  # the quickest of three: one slow call would leave small shapes at k = 1
        t0 = clock()
        forward()
        once = min(once, clock() - t0)
    k = max(1, min(200, int(0.02 / max(once, 1e-6))))
    cases = [
        Case("forward", forward),
        Case("rnnlens h", lambda: rnnlens.trace(model, x, fields=("h",))),
        Case("rnnlens h, c, gates", lambda: rnnlens.trace(model, x)),
        Case("hand loop h, c, gates", hand),
    ]
    return [Case(c.name, _repeated(c.fn, k), c.note) for c in cases], k


def run(*, full: bool = False, repeats: int = 7, shapes: list[Shape] | None = None) -> list[dict[str, Any]]:
    """One row per shape: forward ms and the three ratios (medians of ``repeats`` rounds); the
    first (smallest) shape's row also has ``fixed_ms``."""
    clock = time.process_time if os.environ.get("RNNLENS_BENCH_CLOCK") == "cpu" else time.perf_counter
    if os.environ.get("RNNLENS_BENCH_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["RNNLENS_BENCH_THREADS"]))
    rows = []
    for n, shape in enumerate(shapes or (full_grid() if full else DIAGONAL)):
        cases, k = shape_cases(shape, clock)
        results = interleaved(cases, repeats=repeats, clock=clock)
        row: dict[str, Any] = {
            "shape": shape.label,
            "forward_ms": results[0].median / k * 1e3,
            "h": results[1].ratio,
            "all": results[2].ratio,
            "hand": results[3].ratio,
            "calls_per_sample": k,
        }
        if n == 0:
            row["fixed_ms"] = (
                statistics.median(t - f for t, f in zip(results[1].times, results[0].times)) / k * 1e3
            )
        rows.append(row)
        print(f"  {format_row(row)}", flush=True)
    return rows


HEADER = (
    "| shape | forward ms | rnnlens h | rnnlens h, c, gates | hand loop h, c, gates |\n"
    "|---|---:|---:|---:|---:|"
)


def format_row(row: dict[str, Any]) -> str:
    return (
        f"| {row['shape']} | {row['forward_ms']:.3f} | {row['h']:.2f} | {row['all']:.2f} | "
        f"{row['hand']:.2f} |"
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [HEADER, *map(format_row, rows)]
    fixed = [r["fixed_ms"] for r in rows if "fixed_ms" in r]
    if fixed:
        lines.append(f"\nFixed cost of a trace call ({rows[0]['shape']}, h): {fixed[0]:.3f} ms")
    return "\n".join(lines)


def main(*, full: bool = False, repeats: int = 7) -> list[dict[str, Any]]:
    rows = run(full=full, repeats=repeats)
    import torch

    clock = "CPU" if os.environ.get("RNNLENS_BENCH_CLOCK") == "cpu" else "wall"
    print(
        f"\n[grid] ratios to the forward pass (torch.inference_mode), medians of {repeats} interleaved "
        f"rounds; {clock} time, {torch.get_num_threads()} PyTorch thread(s)\n" + format_table(rows)
    )
    return rows


if __name__ == "__main__":
    import sys

    main(full="--full" in sys.argv)
