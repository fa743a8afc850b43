"""rnnlens.record on Keras models called chunk by chunk: a model with initial_state inputs fed its
own returned state, through model(...) and model.predict(...), and a stateful model; each against
one trace over the whole sequence, the model's own outputs, and the model unchanged afterwards.

Tolerances: h and c against the whole-sequence trace ``rtol=1e-5, atol=1e-5`` (float32; the
chunked run restarts from Keras' own returned state, the whole run carries rnnlens' own)."""

from __future__ import annotations

import numpy as np
import pytest

import rnnlens
from rnnlens.errors import InputError

keras = pytest.importorskip("keras")
L = keras.layers

T, CHUNK, N, F, U = 12, 4, 3, 2, 5


def _streaming() -> tuple[object, object]:
    """A chunk model (x, h, c) -> (y, h, c) and the same layer on the whole sequence."""
    x_in, h_in, c_in = keras.Input((None, F)), keras.Input((U,)), keras.Input((U,))
    lstm = L.LSTM(U, return_sequences=True, return_state=True, name="lstm")
    seq, h, c = lstm(x_in, initial_state=[h_in, c_in])
    chunk_model = keras.Model([x_in, h_in, c_in], [L.Dense(1, name="head")(seq), h, c])
    whole = keras.Model([x_in, h_in, c_in], lstm(x_in, initial_state=[h_in, c_in])[0])
    return chunk_model, whole


def _loop(model, x, call):  # type: ignore[no-untyped-def]
    h = c = np.zeros((N, U), "float32")
    outs = []
    for start in range(0, T, CHUNK):
        y, h, c = call(model, [x[:, start : start + CHUNK], h, c])
        h, c = keras.ops.convert_to_numpy(h), keras.ops.convert_to_numpy(c)
        outs.append(keras.ops.convert_to_numpy(y))
    return outs


CALLS = {
    "call": lambda m, inputs: m(inputs),
    "predict": lambda m, inputs: m.predict(inputs, verbose=0),
}


@pytest.mark.parametrize("how", sorted(CALLS))
def test_chunked_calls_are_joined_and_equal_one_trace(how: str) -> None:
    model, whole = _streaming()
    x = np.random.default_rng(0).normal(size=(N, T, F)).astype("float32")
    cls = type(model)
    plain = _loop(model, x, CALLS[how])
    with rnnlens.record(model) as rec:
        recorded = _loop(model, x, CALLS[how])
    for a, b in zip(recorded, plain):  # the model ran as itself
        np.testing.assert_array_equal(a, b)
    assert type(model) is cls and "predict" not in vars(model)  # nothing left behind
    assert list(rec.states) == ["lstm"]
    assert [(c.name, c.entry, c.start, c.stop) for c in rec.calls] == [
        ("lstm", "lstm", 0, 4), ("lstm#1", "lstm", 4, 8), ("lstm#2", "lstm", 8, 12)
    ]  # fmt: skip
    zeros = np.zeros((N, U), "float32")
    ref = rnnlens.trace(whole, [x, zeros, zeros])["lstm"]
    got = rec.states["lstm"]
    assert got.h.shape == (N, T, U)
    np.testing.assert_allclose(got.h, ref.h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.c, ref.c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.gates.array, ref.gates.array, rtol=1e-5, atol=1e-5)


def test_calls_that_do_not_continue_stay_separate_and_fields_are_honoured() -> None:
    model, _ = _streaming()
    rng = np.random.default_rng(1)
    a, b = (rng.normal(size=(N, CHUNK, F)).astype("float32") for _ in range(2))
    zeros = np.zeros((N, U), "float32")
    with rnnlens.record(model, fields="h") as rec:
        model([a, zeros, zeros])
        model([b, zeros, zeros])  # starts afresh: not a continuation
    assert list(rec.states) == ["lstm", "lstm#1"]
    assert rec.states["lstm#1"].fields == ("h",)
    alone = rnnlens.trace(model, [b, zeros, zeros], fields="h")["lstm"]
    np.testing.assert_allclose(rec.states["lstm#1"].h, alone.h, rtol=1e-6, atol=1e-7)


def test_a_stateful_model_is_recorded_before_its_state_advances() -> None:
    x_in = keras.Input((CHUNK, F), batch_size=N)
    model = keras.Model(x_in, L.GRU(U, stateful=True, return_sequences=True, name="gru")(x_in))
    x = np.random.default_rng(2).normal(size=(N, T, F)).astype("float32")
    with rnnlens.record(model) as rec:
        for start in range(0, T, CHUNK):
            model(x[:, start : start + CHUNK])
    assert [c.entry for c in rec.calls] == ["gru"] * 3
    model.layers[-1].reset_state()
    x_all = keras.Input((T, F), batch_size=N)
    whole = keras.Model(x_all, L.GRU(U, return_sequences=True, name="gru")(x_all))
    whole.layers[-1].set_weights(model.layers[-1].get_weights())
    ref = rnnlens.trace(whole, x)["gru"]
    np.testing.assert_allclose(rec.states["gru"].h, ref.h, rtol=1e-5, atol=1e-5)


def test_training_calls_are_refused_and_the_model_is_restored_after_an_error() -> None:
    model, _ = _streaming()
    cls = type(model)
    zeros = np.zeros((N, U), "float32")
    x = np.zeros((N, CHUNK, F), "float32")
    with pytest.raises(InputError, match="training=True"), rnnlens.record(model):
        model([x, zeros, zeros], training=True)
    assert type(model) is cls and "predict" not in vars(model)
    with pytest.raises(InputError, match="mask"), rnnlens.record(model):
        model([x, zeros, zeros], mask=None)  # an argument the trace of x alone would not see
    assert type(model) is cls


def test_a_stream_written_as_it_goes_equals_the_recording_in_memory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, _ = _streaming()
    x = np.random.default_rng(3).normal(size=(N, T, F)).astype("float32")
    with rnnlens.record(model) as mem:
        _loop(model, x, CALLS["call"])
    with rnnlens.record(model, to=tmp_path / "rec", flush_every=2, chunk_steps=5) as rec:
        _loop(model, x, CALLS["call"])
    assert list(rec.stores) == ["lstm"]
    assert [(c.name, c.entry, c.start, c.stop) for c in rec.calls] == [
        (c.name, c.entry, c.start, c.stop) for c in mem.calls
    ]
    got, want = rec.states["lstm"], mem.states["lstm"]
    np.testing.assert_allclose(np.asarray(got.h[...]), want.h, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got.c[...]), want.c, rtol=0, atol=1e-6)
