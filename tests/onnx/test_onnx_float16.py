"""float16 ONNX ``LSTM`` / ``GRU`` on ONNX Runtime's CPU provider: the kernel runs them in float32
(casts inserted around the node) and only rounds its outputs; rnnlens computes c and the gates
that way, checked against ``Y``, and against an independent float32 NumPy loop here.

Measured: h is ``Y`` (the kernel's own); the float32 loop agrees with ``Y`` within one float16
rounding (rounded, bitwise but for ~0.1% of values at ties); c and gates against the float32
loop here, both rounded to float16: equal but for ≤ 1% of values one float16 ulp apart (ties);
the former rebuild fed the rounded h was up to 1.8e-3 off in c.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from onnx_helpers import recurrent_model, run_ort

import rnnlens

F16 = np.float16


def _sig(v: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-v))).astype(np.float32)


def _loop32(op: str, w: dict, x: np.ndarray, d: int, lbr: int = 0) -> dict:
    """The float32 recurrence of direction ``d`` (ONNX gate orders), (time, batch, ·), no lengths."""
    hid = w["R"].shape[-1]
    wx, rh = w["W"][d].astype(np.float32), w["R"][d].astype(np.float32)
    b = w["B"][d].astype(np.float32)
    n_g = 4 if op == "LSTM" else 3
    wb, rb = b[: n_g * hid], b[n_g * hid :]
    xs = x.astype(np.float32)
    t_len, n = xs.shape[:2]
    h, c = np.zeros((n, hid), np.float32), np.zeros((n, hid), np.float32)
    out = {k: np.zeros((t_len, n, hid), np.float32) for k in ("h", "c", "g0", "g1", "g2", "g3")}
    for s in range(t_len - 1, -1, -1) if d else range(t_len):
        if op == "LSTM":
            pre = xs[s] @ wx.T + h @ rh.T + wb + rb
            i, o, f, g = (pre[:, k * hid : (k + 1) * hid] for k in range(4))
            i, o, f, g = _sig(i), _sig(o), _sig(f), np.tanh(g)
            c = f * c + i * g
            h = o * np.tanh(c)
            gates = (i, f, g, o)  # canonical order
        else:
            xz = xs[s] @ wx.T + wb
            hz = h @ rh.T
            z = _sig(xz[:, :hid] + hz[:, :hid] + rb[:hid])
            r = _sig(xz[:, hid : 2 * hid] + hz[:, hid : 2 * hid] + rb[hid : 2 * hid])
            if lbr:
                n_ = np.tanh(xz[:, 2 * hid :] + r * (hz[:, 2 * hid :] + rb[2 * hid :]))
            else:
                n_ = np.tanh(xz[:, 2 * hid :] + (r * h) @ rh[2 * hid :].T + rb[2 * hid :])
            h = (1 - z) * n_ + z * h
            gates = (z, r, n_, n_)
        out["h"][s], out["c"][s] = h, c
        for k, g_ in enumerate(gates):
            out[f"g{k}"][s] = g_
    return out


def _close16(got: np.ndarray, want32: np.ndarray) -> None:
    """float16 values against float32 ones rounded: equal but at ties (≤ 1%, one ulp)."""
    want = want32.astype(F16)
    off = got != want
    assert off.mean() <= 0.01
    assert (np.abs(got.astype(np.float32) - want32) <= 2.0**-10 * np.abs(want32) + 1e-6).all()


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("hidden", [4, 16])
def test_lstm(direction: str, hidden: int) -> None:
    rng = np.random.default_rng(hidden)
    n_dir = 2 if direction == "bidirectional" else 1
    w = {
        "W": rng.normal(size=(n_dir, 4 * hidden, 3)) * 0.5,
        "R": rng.normal(size=(n_dir, 4 * hidden, hidden)) * 0.3,
        "B": rng.normal(size=(n_dir, 8 * hidden)) * 0.3,
    }
    w16 = {k: v.astype(F16) for k, v in w.items()}
    model = recurrent_model(
        "LSTM",
        hidden=hidden,
        features=3,
        direction=direction,
        weights=w16,
        dtype=F16,
        outputs=("Y", "", "Y_c"),
    )
    x = (rng.normal(size=(25, 3, 3)) * 2).astype(F16)
    y = run_ort(model, {"x": x})[0]
    layer = rnnlens.trace(model, x)["rec"]
    assert layer.h.dtype == layer.c.dtype == np.float16
    for d, name in enumerate(["forward", "backward"][:n_dir]):
        st = layer.directions[name]
        np.testing.assert_array_equal(st.h, y[:, d].swapaxes(0, 1))  # the kernel's own
        ref = _loop32("LSTM", w16, x, d)
        _close16(st.c.swapaxes(0, 1), ref["c"])
        for k, g in enumerate("ifgo"):
            _close16(st.gates[g].swapaxes(0, 1), ref[f"g{k}"])


@pytest.mark.parametrize("lbr", [0, 1])
def test_gru(lbr: int) -> None:
    rng = np.random.default_rng(5)
    w = {
        "W": rng.normal(size=(1, 24, 3)) * 0.5,
        "R": rng.normal(size=(1, 24, 8)) * 0.3,
        "B": rng.normal(size=(1, 48)) * 0.3,
    }
    w16 = {k: v.astype(F16) for k, v in w.items()}
    model = recurrent_model("GRU", hidden=8, features=3, weights=w16, dtype=F16, linear_before_reset=lbr)
    x = (rng.normal(size=(20, 2, 3)) * 2).astype(F16)
    y = run_ort(model, {"x": x})[0]
    layer = rnnlens.trace(model, x)["rec"]
    np.testing.assert_array_equal(layer.h, y[:, 0].swapaxes(0, 1))
    ref = _loop32("GRU", w16, x, 0, lbr)
    for k, g in enumerate("zrn"):
        _close16(layer.gates[g].swapaxes(0, 1), ref[f"g{k}"])


def test_intervene_float16() -> None:
    """The edited run computes in float32 as the kernel does: a no-op edit gives the model's own Y
    within one float16 rounding (ties), a zeroed unit stays zero."""
    rng = np.random.default_rng(9)
    w = {"W": rng.normal(size=(1, 16, 3)), "R": rng.normal(size=(1, 16, 4)), "B": rng.normal(size=(1, 32))}
    model = recurrent_model(
        "LSTM", hidden=4, features=3, weights={k: v.astype(F16) for k, v in w.items()}, dtype=F16
    )
    x = rng.normal(size=(12, 2, 3)).astype(F16)
    y = run_ort(model, {"x": x})[0]
    same = rnnlens.intervene(model, x, [rnnlens.Edit("rec", 3, scale=1.0)])
    out = np.asarray(same.outputs[0])
    _close16(out, y.astype(np.float32))
    edited = rnnlens.intervene(model, x, [rnnlens.Edit("rec", 3, scale=0.0, units=[1])])
    assert (edited.states["rec"].h[:, 3, 1] == 0).all()
