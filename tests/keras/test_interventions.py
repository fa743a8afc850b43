"""rnnlens.intervene on Keras models (every backend) against the NumPy reference with the same edits.

Tolerances: ``rtol=1e-4, atol=1e-5`` against the float64 reference (≤ 5 units, 6 steps); a no-op
edit against ``model.predict``: ``atol=1e-6`` (the edited layer runs the emitting step, the
cell's own operations in the cell's order).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import rnnlens
from keras_helpers import canonical_weights
from rnnlens.errors import OptionError
from rnnlens.testing import reference_rnn

keras = pytest.importorskip("keras")

RTOL, ATOL = 1e-4, 1e-5


def _layer(kind: str, units: int, **kw: Any) -> Any:
    if kind == "lstm":
        return keras.layers.LSTM(units, return_sequences=True, **kw)
    if kind.startswith("gru"):
        return keras.layers.GRU(units, return_sequences=True, reset_after=kind == "gru", **kw)
    return keras.layers.SimpleRNN(units, return_sequences=True, **kw)


def _apply(e: rnnlens.Edit, t: int, t_len: int, target: np.ndarray) -> None:
    """Edit ``e`` applied in place to ``target`` (sample, unit) if it edits step ``t``."""
    steps = range(t_len)[e.step] if isinstance(e.step, slice) else [e.step % t_len]
    if t not in steps:
        return
    one = [e.units] if isinstance(e.units, int) else e.units
    idx: Any = slice(None) if e.units is None else one
    part = target[:, idx]
    if e.set is not None:
        part = np.broadcast_to(np.asarray(e.set, float), part.shape).copy()
    if e.add is not None:
        part = part + e.add
    if e.scale is not None:
        part = part * e.scale
    target[:, idx] = part


def _edit_fn(edits: list[rnnlens.Edit], t_len: int):  # type: ignore[no-untyped-def]
    def edit(t, h, c):  # type: ignore[no-untyped-def]
        for e in edits:
            _apply(e, t, t_len, h if e.field == "h" else c)
        return h, c

    return edit


def _reference(layer: Any, kind: str, x: np.ndarray, edits: list[rnnlens.Edit], name: str) -> dict[str, Any]:
    subs = (
        {"forward": layer.forward_layer, "backward": layer.backward_layer}
        if isinstance(layer, keras.layers.Bidirectional)
        else {"forward": layer}
    )
    out = {}
    for d, sub in subs.items():
        mine = [e for e in edits if e.layer == name and e.direction in (None, d)]
        w = canonical_weights(sub.cell)
        out[d] = reference_rnn(
            "simple" if kind == "simple" else kind[:3] if kind.startswith("gru") else kind,
            x, reverse=d == "backward", edit=_edit_fn(mine, x.shape[1]), **w,  # type: ignore[arg-type]
        )  # fmt: skip
    return out


CASES = [
    ("lstm", True, [rnnlens.Edit("l0", 2, units=[0, 3], scale=0), rnnlens.Edit("l1", 1, field="c", set=0.5)]),
    ("gru", True, [rnnlens.Edit("l0", slice(1, 4), add=0.25, direction="backward")]),
    ("gru_v1", False, [rnnlens.Edit("l0", -1, set=1.0), rnnlens.Edit("l1", 0, units=1, scale=-1.0)]),
    ("simple", False, [rnnlens.Edit("l1", 3, units=slice(0, 2), set=0.0)]),
]


@pytest.mark.parametrize(("kind", "bidirectional", "edits"), CASES, ids=[c[0] for c in CASES])
def test_edits_equal_the_reference(kind: str, bidirectional: bool, edits: list[rnnlens.Edit]) -> None:
    inp = keras.Input((6, 3))
    first = _layer(kind, 4)
    h = (keras.layers.Bidirectional(first, name="l0") if bidirectional else _layer(kind, 4, name="l0"))(inp)
    out = _layer(kind, 5, name="l1")(h)
    model = keras.Model(inp, out)
    x = np.random.default_rng(0).normal(size=(3, 6, 3)).astype("float32")
    run = rnnlens.intervene(model, x, edits)
    ref0 = _reference(model.get_layer("l0"), kind, x, edits, "l0")
    x1 = np.concatenate([r["h"] for r in ref0.values()], axis=-1)
    ref1 = _reference(model.get_layer("l1"), kind, x1, edits, "l1")
    np.testing.assert_allclose(run.outputs, ref1["forward"]["h"], rtol=RTOL, atol=ATOL)
    for name, ref in (("l0", ref0), ("l1", ref1)):
        for d, r in ref.items():
            got = getattr(run.states[name], d)
            np.testing.assert_allclose(got.h, r["h"], rtol=RTOL, atol=ATOL, err_msg=f"{name} {d}")
            if "c" in r:
                np.testing.assert_allclose(got.c, r["c"], rtol=RTOL, atol=ATOL)


def test_a_no_op_edit_is_the_models_own_prediction_and_masked_steps_are_refused() -> None:
    inp = keras.Input((None,), dtype="int32")
    e = keras.layers.Embedding(12, 4, mask_zero=True)(inp)
    h = keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True), name="bi")(e)
    out = keras.layers.Dense(1)(keras.layers.GRU(2, name="gru")(h))
    model = keras.Model(inp, out)
    x = np.array([[3, 4, 5, 6, 0, 0], [1, 2, 3, 4, 5, 6]], "int32")
    run = rnnlens.intervene(model, x, rnnlens.Edit("bi", 1, add=0.0))
    np.testing.assert_allclose(run.outputs, model.predict(x, verbose=0), rtol=0, atol=1e-6)
    assert set(run.states) == {"bi", "gru"}
    with pytest.raises(OptionError, match="masked"):
        rnnlens.intervene(model, x, rnnlens.Edit("bi", 5, set=0.0))
    only = rnnlens.intervene(model, x, rnnlens.Edit("bi", 3, set=0.0), layers=["gru"])
    assert list(only.states) == ["gru"]


def _write_fn(edits: list[rnnlens.Edit], t_len: int):  # type: ignore[no-untyped-def]
    """``edit_write`` for the reference: the write edits of one direction, in order."""

    def edit_write(t, w):  # type: ignore[no-untyped-def]
        for e in edits:
            _apply(e, t, t_len, w)
        return w

    return edit_write


WRITE_CASES = [
    ("lstm", [rnnlens.Edit("l0", 2, field="c", units=[0, 3], target="write", scale=3.0),
              rnnlens.Edit("l0", 2, field="c", units=[1], set=0.5)]),  # write first, then the state
    ("gru", [rnnlens.Edit("l0", slice(1, 4), field="h", target="write", add=0.25, direction="backward")]),
    ("gru_v1", [rnnlens.Edit("l0", -1, field="h", units=2, target="write", set=1.0)]),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "edits"), WRITE_CASES, ids=[c[0] for c in WRITE_CASES])
def test_write_edits_equal_the_reference(kind: str, edits: list[rnnlens.Edit]) -> None:
    """Edit(target="write") on Keras LSTM / GRU: the reference loop with that step's write
    replaced (``edit_write``), state edits after it, bidirectional, every backend."""
    inp = keras.Input((6, 3))
    model = keras.Model(inp, keras.layers.Bidirectional(_layer(kind, 4), name="l0")(inp))
    x = np.random.default_rng(1).normal(size=(3, 6, 3)).astype("float32")
    run = rnnlens.intervene(model, x, edits)
    layer = model.get_layer("l0")
    for d, sub in (("forward", layer.forward_layer), ("backward", layer.backward_layer)):
        mine = [e for e in edits if e.direction in (None, d)]
        states = [e for e in mine if e.target == "state"]
        writes = [e for e in mine if e.target == "write"]
        ref = reference_rnn(
            "lstm" if kind == "lstm" else "gru", x, reverse=d == "backward", edit=_edit_fn(states, 6),
            edit_write=_write_fn(writes, 6),
            **canonical_weights(sub.cell),  # type: ignore[arg-type]
        )  # fmt: skip
        got = getattr(run.states["l0"], d)
        np.testing.assert_allclose(got.h, ref["h"], rtol=RTOL, atol=ATOL, err_msg=d)
        if kind == "lstm":
            np.testing.assert_allclose(got.c, ref["c"], rtol=RTOL, atol=ATOL, err_msg=d)
    # an unedited write is the cell's own: a no-op write edit gives the model's prediction
    same = rnnlens.intervene(model, x, rnnlens.Edit("l0", 0, field="c" if kind == "lstm" else "h",
                                                    target="write", add=0.0))  # fmt: skip
    np.testing.assert_allclose(same.outputs, model.predict(x, verbose=0), rtol=0, atol=1e-6)


def test_write_edits_in_a_subclassed_model() -> None:
    class Net(keras.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.rnn = keras.layers.LSTM(3, return_sequences=True)

        def call(self, x: Any) -> Any:
            return self.rnn(x)

    model = Net()
    x = np.random.default_rng(2).normal(size=(2, 5, 2)).astype("float32")
    model(x)
    edit = rnnlens.Edit("rnn", 1, field="c", units=[2], target="write", scale=-2.0)
    run = rnnlens.intervene(model, x, edit)
    ref = reference_rnn("lstm", x, edit_write=_write_fn([edit], 5), **canonical_weights(model.rnn.cell))  # type: ignore[arg-type]
    np.testing.assert_allclose(run.states["rnn"].c, ref["c"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(run.outputs, ref["h"], rtol=RTOL, atol=ATOL)
