"""ONNX LSTM nodes with peepholes ``P``, ``clip`` and ``input_forget``: traced (h, c, gates) and
edited, against ONNX Runtime's own ``Y``/``Y_h``/``Y_c`` and an independent float64 NumPy loop of
the ONNX equations (peepholes on c_{t-1} for i and f and on c_t for o; clip on every gate's
pre-activation, not on c; f = 1 - i when coupled).

Tolerances: h against ONNX Runtime ``atol=1e-5`` (rnnlens returns the kernel's own h at valid
steps; the parity check bounds the rebuild); c and gates against the float64 loop
``rtol=1e-4, atol=1e-5`` (float32)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from onnx_helpers import recurrent_model, run_ort  # noqa: E402

import rnnlens  # noqa: E402

H, F, T, N = 4, 3, 7, 2
CASES = {
    "peepholes": ({"P": True}, {}),
    "clip": ({}, {"clip": 0.8}),
    "input_forget": ({}, {"input_forget": 1}),
    "all three": ({"P": True}, {"clip": 1.1, "input_forget": 1}),
}


def _model(case: str, direction: str, lens: bool, seed: int = 0) -> tuple[Any, dict[str, np.ndarray], dict]:
    rng = np.random.default_rng(seed)
    n_dir = 2 if direction == "bidirectional" else 1
    extra, attrs = CASES[case]
    w = {
        "W": rng.normal(size=(n_dir, 4 * H, F)),
        "R": rng.normal(size=(n_dir, 4 * H, H)),
        "B": rng.normal(size=(n_dir, 8 * H)),
    }
    if extra.get("P"):
        w["P"] = rng.normal(size=(n_dir, 3 * H))
    model = recurrent_model(
        "LSTM", hidden=H, features=F, direction=direction, weights=w, lens=lens,
        outputs=("Y", "Y_h", "Y_c"), **attrs,
    )  # fmt: skip
    for name in ("Y_h", "Y_c"):  # graph outputs too: ONNX Runtime's own final states
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model, w, attrs


def _reference(
    w: dict, attrs: dict, x: np.ndarray, d: int, reverse: bool, lens: np.ndarray, edit: Any = None
) -> dict:
    """One direction, float64, (time, batch, feature) input; states (batch, time, ...)."""
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    clip = attrs.get("clip")
    cl = (lambda a: np.clip(a, -clip, clip)) if clip is not None else (lambda a: a)
    W, R, B = w["W"][d], w["R"][d], w["B"][d]
    wi, wo, wf, wc = np.split(W, 4)
    ri, ro, rf, rc = np.split(R, 4)
    b = [x_ + y_ for x_, y_ in zip(np.split(B[: 4 * H], 4), np.split(B[4 * H :], 4))]
    pi, po, pf = np.split(w["P"][d], 3) if "P" in w else (np.zeros(H),) * 3
    h, c = np.zeros((N, H)), np.zeros((N, H))
    out = {k: np.full((N, T, H), np.nan) for k in ("h", "c", "i", "f", "g", "o")}
    for t in range(T - 1, -1, -1) if reverse else range(T):
        xt, valid = x[t].astype(np.float64), t < lens
        i = sig(cl(xt @ wi.T + h @ ri.T + pi * c + b[0]))
        f = 1 - i if attrs.get("input_forget") else sig(cl(xt @ wf.T + h @ rf.T + pf * c + b[2]))
        g = np.tanh(cl(xt @ wc.T + h @ rc.T + b[3]))
        c_new = f * c + i * g
        o = sig(cl(xt @ wo.T + h @ ro.T + po * c_new + b[1]))
        h_new = o * np.tanh(c_new)
        if edit is not None:
            h_new, c_new = edit(t, h_new, c_new)
        h = np.where(valid[:, None], h_new, h)
        c = np.where(valid[:, None], c_new, c)
        out["h"][:, t], out["c"][:, t] = h, c
        for k, v in (("i", i), ("f", f), ("g", g), ("o", o)):
            out[k][valid, t] = v[valid]
    return out


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_traced_states_equal_onnxruntime_and_the_reference(case: str, direction: str) -> None:
    lens_given = direction == "forward"
    model, w, attrs = _model(case, direction, lens_given)
    x = (3 * np.random.default_rng(1).normal(size=(T, N, F))).astype(np.float32)  # saturating: clip bites
    lens = np.array([T, T - 3], np.int32) if lens_given else np.full(N, T, np.int32)
    feeds = {"x": x, "lens": lens} if lens_given else {"x": x}
    assert rnnlens.describe(model)[0].fields == ("h", "c", "gates")
    states = rnnlens.trace(model, x, **({"lens": lens} if lens_given else {}))
    y, _, y_c = run_ort(model, feeds)
    ls = states["rec"]
    for d, name in enumerate(ls.directions):
        got = getattr(ls, name)
        valid = np.arange(T)[None, :] < lens[:, None]
        np.testing.assert_allclose(got.h[valid], y[:, d].transpose(1, 0, 2)[valid], rtol=0, atol=1e-5)
        ref = _reference(w, attrs, x, d, name == "backward", lens)
        np.testing.assert_allclose(got.c[valid], ref["c"][valid], rtol=1e-4, atol=1e-5)
        for k in "ifgo":
            np.testing.assert_allclose(got.gates[k], ref[k], rtol=1e-4, atol=1e-5, equal_nan=True)
        np.testing.assert_allclose(got.last("c"), y_c[d], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_edits_equal_the_reference_with_the_edit(case: str) -> None:
    model, w, attrs = _model(case, "forward", False, seed=2)
    x = (2 * np.random.default_rng(3).normal(size=(T, N, F))).astype(np.float32)
    lens = np.full(N, T)
    y_own = run_ort(model, {"x": x})
    noop = rnnlens.intervene(model, x, rnnlens.Edit("rec", 2, add=0.0))
    for got, want in zip(noop.outputs, y_own):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)

    def edit(t: int, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if t == 3:
            c = c.copy()
            c[:, 1] = 2.0
        return h, c

    run = rnnlens.intervene(model, x, rnnlens.Edit("rec", 3, field="c", units=1, set=2.0))
    ref = _reference(w, attrs, x, 0, False, lens, edit)
    np.testing.assert_allclose(run.outputs[0][:, 0].transpose(1, 0, 2), ref["h"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(run.states["rec"].c, ref["c"], rtol=1e-4, atol=1e-5)
