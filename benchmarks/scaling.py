"""How the ratio to the plain forward moves with sequence length, units and batch size
(one Keras LSTM layer; base point T=100, units=128, batch=256, 32 features)."""

from __future__ import annotations

from typing import Any

from .harness import Case, interleaved

BASE = {"time": 100, "units": 128, "batch": 256}
AXES = {
    "time": [25, 100, 400, 800],
    "units": [32, 128, 512],
    "batch": [1, 64, 512, 2048],
}
QUICK_AXES = {"time": [25, 100], "units": [32, 128], "batch": [1, 512]}


def _point(time: int, units: int, batch: int, repeats: int) -> dict[str, float]:
    import rnnlens

    from .keras_suite import data, stacked_lstm

    model = stacked_lstm(units=units, layers=1, time=time)
    x = data(batch=batch, time=time)
    results = interleaved(
        [
            Case("floor", lambda: model.predict(x, batch_size=batch, verbose=0)),
            Case("h", lambda: rnnlens.trace(model, x, fields=("h",))),
            Case("all", lambda: rnnlens.trace(model, x)),
        ],
        repeats=repeats,
    )
    return {r.name: r.ratio for r in results[1:]} | {"floor_s": results[0].median}


def run(quick: bool = False, repeats: int = 2) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for axis, values in (QUICK_AXES if quick else AXES).items():
        rows = []
        for v in values:
            point = {**BASE, axis: v}
            rows.append({axis: v, **_point(point["time"], point["units"], point["batch"], repeats)})
        out[axis] = rows
    return out


def format_scaling(out: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["\nScaling (one LSTM layer; ratio of rnnlens to model.predict on the same batch)"]
    for axis, rows in out.items():
        lines.append(f"  {axis:<6} " + "  ".join(f"{r[axis]:>6}" for r in rows))
        lines.append("  h      " + "  ".join(f"{r['h']:>6.2f}" for r in rows))
        lines.append("  h,c,g  " + "  ".join(f"{r['all']:>6.2f}" for r in rows))
    return "\n".join(lines)


def plot(out: dict[str, list[dict[str, Any]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(out), figsize=(4 * len(out), 3.2), sharey=True)
    for ax, (axis, rows) in zip(axes, out.items()):
        xs = [r[axis] for r in rows]
        ax.plot(xs, [r["h"] for r in rows], "o-", label="h")
        ax.plot(xs, [r["all"] for r in rows], "s-", label="h, c, gates")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(axis)
        ax.set_title(f"vs {axis}")
    axes[0].set_ylabel("time / model.predict")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
