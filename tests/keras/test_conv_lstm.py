"""Keras ConvLSTM1D/2D/3D: h, c and gates as feature maps, against the layer itself and an
independent float64 NumPy reference (naive convolutions, one time step at a time)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rnnlens
from rnnlens.cli import main
from rnnlens.errors import FieldNotAvailableError, ParityError
from rnnlens.testing import hard_sigmoid, sigmoid

keras = pytest.importorskip("keras")

# float32 Keras vs float64 reference, a few time steps of convolutions
RTOL, ATOL = 1e-4, 2e-5
ACTS = {
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "sigmoid": sigmoid,
    "hard_sigmoid": hard_sigmoid,
}


# --------------------------------------------------------------------------- NumPy reference


def np_conv(x: np.ndarray, w: np.ndarray, strides, padding: str, dilation) -> np.ndarray:
    """channels_last N-D convolution, ``x`` (sample, *spatial, channel), ``w`` (*kernel, in, out):
    one shifted, strided window per kernel offset (TensorFlow's "same" padding split)."""
    rank = x.ndim - 2
    sizes, ks = x.shape[1:-1], w.shape[:rank]
    span = [(k - 1) * d + 1 for k, d in zip(ks, dilation)]
    if padding == "same":
        out = [math.ceil(s / st) for s, st in zip(sizes, strides)]
        pads = [max((o - 1) * st + sp - s, 0) for o, st, sp, s in zip(out, strides, span, sizes)]
        x = np.pad(x, [(0, 0), *[(p // 2, p - p // 2) for p in pads], (0, 0)])
    else:
        out = [(s - sp) // st + 1 for s, sp, st in zip(sizes, span, strides)]
    y = np.zeros((x.shape[0], *out, w.shape[-1]))
    for offset in np.ndindex(*ks):
        window = tuple(
            slice(o * d, o * d + (n - 1) * st + 1, st) for o, d, n, st in zip(offset, dilation, out, strides)
        )
        y += x[(slice(None), *window)] @ w[offset]
    return y


def reference_conv_lstm(
    x,
    kernel,
    recurrent_kernel,
    bias,
    *,
    strides,
    padding,
    dilation,
    activation="tanh",
    recurrent_activation="sigmoid",
    mask=None,
    go_backwards=False,
    h0=None,
    c0=None,
):  # type: ignore[no-untyped-def]
    """ConvLSTM, step by step in float64: states carried and gates NaN at masked steps; input order."""
    act, rec = ACTS[activation], ACTS[recurrent_activation]
    x = np.asarray(x, np.float64)
    n, t = x.shape[:2]
    rank = x.ndim - 3
    ks = np.split(np.asarray(kernel, np.float64), 4, axis=-1)
    rs = np.split(np.asarray(recurrent_kernel, np.float64), 4, axis=-1)
    bs = np.split(np.asarray(bias, np.float64), 4) if bias is not None else [0.0] * 4
    ones = (1,) * rank
    shape = np_conv(x[:, 0], ks[0], strides, padding, dilation).shape[1:]
    h = np.zeros((n, *shape)) if h0 is None else np.asarray(h0, np.float64)
    c = np.zeros((n, *shape)) if c0 is None else np.asarray(c0, np.float64)
    out_h, out_c = np.zeros((n, t, *shape)), np.zeros((n, t, *shape))
    gates = np.full((n, t, 4, *shape), np.nan)
    for s in reversed(range(t)) if go_backwards else range(t):
        z = [
            np_conv(x[:, s], ks[j], strides, padding, dilation)
            + bs[j]
            + np_conv(h, rs[j], ones, "same", ones)
            for j in range(4)
        ]
        i, f, g, o = rec(z[0]), rec(z[1]), act(z[2]), rec(z[3])
        c_new = f * c + i * g
        h_new = o * act(c_new)
        valid = np.ones(n, bool) if mask is None else np.asarray(mask[:, s], bool)
        v = valid.reshape((n,) + (1,) * len(shape))
        h, c = np.where(v, h_new, h), np.where(v, c_new, c)
        out_h[:, s], out_c[:, s] = h, c
        gates[valid, s] = np.stack([i, f, g, o], axis=1)[valid]
    return {"h": out_h, "c": out_c, "gates": gates, "last_h": h, "last_c": c}


def _np(a):  # type: ignore[no-untyped-def]
    return keras.ops.convert_to_numpy(a)


def _weights(layer):  # type: ignore[no-untyped-def]
    cell = layer.cell
    bias = cell.bias.numpy() if cell.use_bias else None
    return cell.kernel.numpy(), cell.recurrent_kernel.numpy(), bias


def _randomize(model, seed: int = 0, scale: float = 0.4) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.set_weights(
            [rng.normal(scale=scale, size=w.shape).astype("float32") for w in layer.get_weights()]
        )


def _close(got, want, rtol: float = RTOL, atol: float = ATOL) -> None:  # type: ignore[no-untyped-def]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def _check_direction(d, ref) -> None:  # type: ignore[no-untyped-def]
    """One traced direction against the reference: h, c and every gate (NaN where masked)."""
    _close(d.h, ref["h"])
    _close(d.c, ref["c"])
    for k, name in enumerate(("i", "f", "g", "o")):
        np.testing.assert_array_equal(np.isnan(d.gates[name]), np.isnan(ref["gates"][:, :, k]))
        _close(d.gates[name], ref["gates"][:, :, k])


def _model(layer, input_shape):  # type: ignore[no-untyped-def]
    inp = keras.Input(input_shape)
    return keras.Model(inp, layer(inp))


def _conv_kwargs(layer) -> dict:  # type: ignore[no-untyped-def, type-arg]
    cell = layer.cell
    return {"strides": cell.strides, "padding": cell.padding, "dilation": cell.dilation_rate}


# --------------------------------------------------------------------------- against the layer


def test_conv_lstm2d_h_c_gates_match_layer_and_reference() -> None:
    layer = keras.layers.ConvLSTM2D(
        3, (3, 2), padding="same", return_sequences=True, return_state=True, name="conv"
    )
    model = _model(layer, (4, 5, 6, 2))
    _randomize(model)
    x = np.random.default_rng(1).normal(size=(3, 4, 5, 6, 2)).astype("float32")
    states = rnnlens.trace(model, x)
    ls = states["conv"]
    seq, last_h, last_c = (_np(a) for a in model(x))
    assert ls.kind == "convlstm" and ls.units == 3 and ls.directions.keys() == {"forward"}
    assert ls.h.shape == ls.c.shape == ls.gates["o"].shape == (3, 4, 5, 6, 3)
    assert ls.gates.array.shape == (3, 4, 4, 5, 6, 3)
    np.testing.assert_allclose(ls.h, seq, rtol=1e-6, atol=1e-7)  # the layer's own output, all steps
    np.testing.assert_allclose(ls.last(), last_h, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ls.last("c"), last_c, rtol=1e-6, atol=1e-7)
    _check_direction(ls.forward, reference_conv_lstm(x, *_weights(layer), **_conv_kwargs(layer)))


def test_conv_lstm1d_valid_padding_strides() -> None:
    layer = keras.layers.ConvLSTM1D(2, 3, strides=2, padding="valid", return_state=True, name="c1")
    model = _model(layer, (5, 9, 3))
    _randomize(model, seed=2)
    x = np.random.default_rng(3).normal(size=(2, 5, 9, 3)).astype("float32")
    ls = rnnlens.trace(model, x, strategy="reconstruct")["c1"]  # no fused kernel: emitted anyway
    out, _, last_c = (_np(a) for a in model(x))
    assert ls.h.shape == (2, 5, 4, 2)
    np.testing.assert_allclose(ls.last(), out, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ls.last("c"), last_c, rtol=1e-6, atol=1e-7)
    _check_direction(ls.forward, reference_conv_lstm(x, *_weights(layer), **_conv_kwargs(layer)))


def test_conv_lstm3d_dilation() -> None:
    layer = keras.layers.ConvLSTM3D(2, 2, padding="same", dilation_rate=2, return_sequences=True, name="c3")
    model = _model(layer, (3, 4, 3, 5, 1))
    _randomize(model, seed=4)
    x = np.random.default_rng(5).normal(size=(2, 3, 4, 3, 5, 1)).astype("float32")
    ls = rnnlens.trace(model, x)["c3"]
    np.testing.assert_allclose(ls.h, _np(model(x)), rtol=1e-6, atol=1e-7)
    _check_direction(ls.forward, reference_conv_lstm(x, *_weights(layer), **_conv_kwargs(layer)))


@st.composite
def conv_configs(draw):  # type: ignore[no-untyped-def]
    rank = draw(st.sampled_from([1, 2]))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    dilate = draw(st.booleans())
    strides = (1,) * rank if dilate else tuple(draw(st.integers(1, 2)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(rank)) if dilate else (1,) * rank
    padding = draw(st.sampled_from(["same", "valid"]))
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    spatial = tuple(draw(st.integers(sp, sp + 3)) for sp in span)
    return {
        "rank": rank,
        "layer": {
            "filters": draw(st.integers(1, 3)),
            "kernel_size": kernel,
            "strides": strides,
            "dilation_rate": dilation,
            "padding": padding,
            "use_bias": draw(st.booleans()),
            "go_backwards": draw(st.booleans()),
            "activation": draw(st.sampled_from(["tanh", "relu"])),
            "recurrent_activation": draw(st.sampled_from(["sigmoid", "hard_sigmoid"])),
        },
        "spatial": spatial,
        "channels": draw(st.integers(1, 3)),
        "time": draw(st.integers(1, 4)),
        "samples": draw(st.integers(1, 3)),
        "masked": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


@settings(max_examples=3 if keras.backend.backend() == "jax" else 8)  # JAX: a jit compile each
@given(conv_configs())
def test_random_configs_against_reference(cfg) -> None:  # type: ignore[no-untyped-def]
    cls = keras.layers.ConvLSTM1D if cfg["rank"] == 1 else keras.layers.ConvLSTM2D
    layer = cls(**cfg["layer"], return_sequences=True, name="conv")
    model = _model(layer, (cfg["time"], *cfg["spatial"], cfg["channels"]))
    _randomize(model, seed=cfg["seed"])
    rng = np.random.default_rng(cfg["seed"])
    x = rng.normal(size=(cfg["samples"], cfg["time"], *cfg["spatial"], cfg["channels"])).astype("float32")
    mask = rng.random((cfg["samples"], cfg["time"])) < 0.7 if cfg["masked"] else None
    ls = rnnlens.trace(model, x, mask=mask)["conv"]
    kw = cfg["layer"]
    ref = reference_conv_lstm(
        x,
        *_weights(layer),
        **_conv_kwargs(layer),
        activation=kw["activation"],
        recurrent_activation=kw["recurrent_activation"],
        mask=mask,
        go_backwards=kw["go_backwards"],
    )
    _check_direction(ls.backward if kw["go_backwards"] else ls.forward, ref)
    _close(ls.last(), ref["last_h"])
    _close(ls.last("c"), ref["last_c"])
    if mask is None:  # the layer's own output (its masked steps repeat the previous output)
        own = _np(model(x))
        np.testing.assert_allclose(ls.h, own[:, ::-1] if kw["go_backwards"] else own, rtol=1e-6, atol=1e-7)


def test_mask_carries_states_and_matches_the_masked_layer() -> None:
    layer = keras.layers.ConvLSTM2D(2, 3, padding="same", return_sequences=True, name="conv")
    model = _model(layer, (5, 4, 4, 2))
    _randomize(model, seed=6)
    x = np.random.default_rng(7).normal(size=(3, 5, 4, 4, 2)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [0, 1, 1, 0, 1], [1, 1, 1, 1, 1]], bool)
    states = rnnlens.trace(model, x, mask=mask)
    ls = states["conv"]
    np.testing.assert_array_equal(states.mask, mask)
    if keras.backend.backend() != "jax":  # Keras' JAX loop cannot mask ConvLSTM (broadcast error)
        own = _np(layer(x, mask=mask))  # the layer called with the mask: the oracle at valid steps
        np.testing.assert_allclose(ls.h[mask], own[mask], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(ls.h[0, 3], ls.h[0, 2])  # carried, exactly
    np.testing.assert_array_equal(ls.c[0, 4], ls.c[0, 2])
    np.testing.assert_array_equal(ls.h[1, 0], 0.0)  # before the first valid step: the initial state
    assert np.isnan(ls.gates["f"][~mask]).all() and not np.isnan(ls.gates["f"][mask]).any()
    _check_direction(ls.forward, reference_conv_lstm(x, *_weights(layer), **_conv_kwargs(layer), mask=mask))


def test_bidirectional_conv_lstm2d() -> None:
    inner = keras.layers.ConvLSTM2D(2, 3, padding="same", return_sequences=True, return_state=True)
    bi = keras.layers.Bidirectional(inner, name="bi")
    model = _model(bi, (4, 5, 5, 1))
    _randomize(model, seed=8)
    x = np.random.default_rng(9).normal(size=(2, 4, 5, 5, 1)).astype("float32")
    ls = rnnlens.trace(model, x)["bi"]
    seq, fh, fc, bh, bc = (_np(a) for a in model(x))
    assert ls.kind == "convlstm" and ls.spec.layer_type.startswith("Bidirectional(ConvLSTM2D")
    assert ls.h.shape == ls.c.shape == (2, 4, 5, 5, 4)
    np.testing.assert_allclose(ls.h, seq, rtol=1e-6, atol=1e-7)  # concat along channels, like Keras
    np.testing.assert_allclose(ls.last(), np.concatenate([fh, bh], -1), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ls.last("c"), np.concatenate([fc, bc], -1), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ls.backward.last("c"), bc, rtol=1e-6, atol=1e-7)
    kw = _conv_kwargs(bi.forward_layer)
    _check_direction(ls.forward, reference_conv_lstm(x, *_weights(bi.forward_layer), **kw))
    _check_direction(
        ls.backward, reference_conv_lstm(x, *_weights(bi.backward_layer), **kw, go_backwards=True)
    )


def test_downstream_layers_fields_h_only_and_model_untouched() -> None:
    inp = keras.Input((4, 6, 6, 1))
    y = keras.layers.ConvLSTM2D(2, 3, padding="same", return_sequences=True, name="enc")(inp)
    y = keras.layers.ConvLSTM2D(3, 3, name="dec")(y)  # last step only, feeds a head
    out = keras.layers.Dense(1)(keras.layers.Flatten()(y))
    model = keras.Model(inp, out)
    _randomize(model, seed=10)
    x = np.random.default_rng(11).normal(size=(3, 4, 6, 6, 1)).astype("float32")
    before_w = [w.copy() for w in model.get_weights()]
    before_cfg = model.get_config()
    before_y = model.predict(x, verbose=0)
    full = rnnlens.trace(model, x)
    h_only = rnnlens.trace(model, x, fields=("h",), layers="dec")
    assert list(full) == ["enc", "dec"] and h_only["dec"].fields == ("h",)
    np.testing.assert_array_equal(h_only["dec"].h, full["dec"].h)
    with pytest.raises(FieldNotAvailableError):
        h_only["dec"].c  # noqa: B018
    enc_out = _np(model.get_layer("enc")(x))
    np.testing.assert_allclose(full["enc"].h, enc_out, rtol=1e-6, atol=1e-7)
    dec = model.get_layer("dec")
    _check_direction(full["dec"].forward, reference_conv_lstm(enc_out, *_weights(dec), **_conv_kwargs(dec)))
    after = model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before_w, after))
    assert model.get_config() == before_cfg
    np.testing.assert_array_equal(model.predict(x, verbose=0), before_y)
    assert len(model.layers) == 5


def test_stateful_starts_from_current_state_and_does_not_advance_it() -> None:
    layer = keras.layers.ConvLSTM1D(2, 3, padding="same", stateful=True, return_sequences=True, name="conv")
    inp = keras.Input((3, 5, 2), batch_size=2)
    model = keras.Model(inp, layer(inp))
    _randomize(model, seed=12)
    rng = np.random.default_rng(13)
    for state in layer.states:  # a state it could have reached after earlier batches
        state.assign(rng.uniform(-0.5, 0.5, size=state.shape).astype("float32"))
    h0, c0 = (np.array(s.numpy()) for s in layer.states)
    x = rng.normal(size=(2, 3, 5, 2)).astype("float32")
    ls = rnnlens.trace(model, x)["conv"]
    np.testing.assert_array_equal(layer.states[0].numpy(), h0)
    _check_direction(
        ls.forward, reference_conv_lstm(x, *_weights(layer), **_conv_kwargs(layer), h0=h0, c0=c0)
    )


def test_fixed_batch_variable_time() -> None:
    # the probe's compiled pass sees (2, None, ...) on the second length: the loop must still
    # run every step (backend.rnn, time-major, once capped it at the batch size)
    layer = keras.layers.ConvLSTM1D(2, 3, padding="same", return_sequences=True, name="conv")
    inp = keras.Input((None, 5, 1), batch_size=2)
    model = keras.Model(inp, layer(inp))
    _randomize(model, seed=20)
    rng = np.random.default_rng(21)
    for steps in (3, 6, 4):
        x = rng.normal(size=(2, steps, 5, 1)).astype("float32")
        ls = rnnlens.trace(model, x)["conv"]
        np.testing.assert_allclose(ls.h, _np(model(x)), rtol=1e-6, atol=1e-7)
        _close(ls.c, reference_conv_lstm(x, *_weights(layer), **_conv_kwargs(layer))["c"])


def test_mixed_precision_policy() -> None:
    layer = keras.layers.ConvLSTM1D(
        2, 3, padding="same", return_sequences=True, dtype="mixed_float16", name="conv"
    )
    model = _model(layer, (4, 6, 2))
    _randomize(model, seed=18)
    x = np.random.default_rng(19).normal(size=(2, 4, 6, 2)).astype("float32")
    ls = rnnlens.trace(model, x)["conv"]
    assert ls.h.dtype == ls.c.dtype == ls.gates["g"].dtype == np.float16  # the layer's compute dtype
    np.testing.assert_allclose(ls.h, _np(model(x)), rtol=2e-3, atol=1e-3)  # float16: ~1 ulp
    ref = reference_conv_lstm(x, *_weights(layer), **_conv_kwargs(layer))
    for got, want in ((ls.h, ref["h"]), (ls.c, ref["c"]), (ls.gates.array, ref["gates"])):
        np.testing.assert_allclose(got, want, rtol=2e-2, atol=5e-3)


def test_describe_reports_feature_maps() -> None:
    model = _model(keras.layers.ConvLSTM2D(4, 3, strides=2, name="conv"), (3, 9, 7, 2))
    (spec,) = rnnlens.describe(model)
    assert (spec.kind, spec.units, spec.cell_units, spec.fields) == ("convlstm", 4, 4, ("h", "c", "gates"))
    assert spec.feature_shape == (4, 3, 4) and spec.gate_names == ("i", "f", "g", "o")
    assert "(sample, time, *spatial, channel)" in spec.notes[0]


# --------------------------------------------------------------------------- parity, storage


def test_last_step_parity_check_catches_a_wrong_step() -> None:
    from rnnlens.adapters.keras_ import conv as keras_conv

    layer = keras.layers.ConvLSTM1D(2, 3, padding="same", name="conv")
    _model(layer, (4, 6, 1))
    _randomize(keras.Sequential([layer]), seed=14)
    cell, ops = layer.cell, keras.ops
    rng = np.random.default_rng(15)
    x = ops.convert_to_tensor(rng.normal(size=(3, 4, 6, 1)).astype("float32"))
    # a gap before the last valid step: the state before it comes from step 0
    mask = ops.convert_to_tensor(np.array([[1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool))
    init = cell.get_initial_state(batch_size=3)
    step, states, steps = keras_conv.emit_step(cell), init, []
    for t in range(4):  # the loop, eagerly: states carried over masked steps
        out, new = step(x[:, t], states)
        keep = ops.reshape(mask[:, t], (3, 1, 1))
        states = [ops.where(keep, n, s) for n, s in zip(new, states)]
        steps.append(out)
    emitted = [ops.stack([o[k] for o in steps]) for k in range(6)]  # time-major
    captured = {
        f"conv|forward|{k}": np.array(_np(v))
        for k, v in keras_conv.last_step_check(cell, x, mask, init, emitted, go_backwards=False).items()
    }
    np.testing.assert_array_equal(captured["conv|forward|check_valid"], [True, True, False])
    keras_conv.check_parity(captured, "conv|forward|", layer="conv")  # the real step passes
    captured["conv|forward|check_c"] = (
        captured["conv|forward|check_c"] + 1e-3 * np.array([0, 1, 0])[:, None, None]
    )
    with pytest.raises(ParityError, match="ConvLSTMCell"):
        keras_conv.check_parity(captured, "conv|forward|", layer="conv")
    captured["conv|forward|check_c"][1] = captured["conv|forward|check_c_ref"][1]
    captured["conv|forward|check_h"][2] += 1.0  # a sample without a valid step is not checked
    keras_conv.check_parity(captured, "conv|forward|", layer="conv")


def test_feature_maps_are_stored_and_read_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """h, c and the gates of a ConvLSTM are stored as (sample, time, [gate,] *feature map)
    arrays with dimension names; open_states, load, last() and export read them back."""
    pytest.importorskip("zarr")
    model = _model(
        keras.layers.ConvLSTM2D(2, 3, padding="same", return_sequences=True, name="conv"), (3, 4, 5, 1)
    )
    x = np.random.default_rng(0).normal(size=(5, 3, 4, 5, 1)).astype("float32")
    store = tmp_path / "run.zarr"
    rnnlens.extract_to(store, model, x, fields=None, batch_size=5)
    direct = rnnlens.trace(model, x)["conv"]
    stored = rnnlens.open_states(store)["conv"]
    np.testing.assert_array_equal(stored.h[:], direct.h)
    np.testing.assert_array_equal(stored.c[:], direct.c)
    np.testing.assert_array_equal(stored.gates["f"][:], direct.gates["f"])
    np.testing.assert_array_equal(stored.forward.last("c"), direct.last("c"))
    np.testing.assert_array_equal(rnnlens.open_states(store).load()["conv"].gates.array, direct.gates.array)
    assert main(["export", str(store), "-o", str(tmp_path / "out.npz")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out.npz")["conv_forward_h"], direct.h)
    assert main(["export", str(store), "-o", str(tmp_path / "out.h5")]) == 0
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "out.h5") as f:
        assert f["conv_forward_gates_f"].shape == (5 * 3, 4, 5, 2)


def _tf_cpu_only() -> bool:
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return not tf.config.list_logical_devices("GPU")


@pytest.mark.skipif(_tf_cpu_only(), reason="TensorFlow's CPU convolution supports channels_last only")
def test_channels_first() -> None:
    layer = keras.layers.ConvLSTM2D(
        2,
        3,
        padding="same",
        data_format="channels_first",
        return_sequences=True,
        go_backwards=True,
        name="conv",
    )
    model = _model(layer, (4, 2, 5, 6))
    _randomize(model, seed=16)
    x = np.random.default_rng(17).normal(size=(3, 4, 2, 5, 6)).astype("float32")
    mask = np.array([[1, 0, 1, 0], [1, 1, 1, 1], [0, 1, 1, 0]], bool)
    ls = rnnlens.trace(model, x)["conv"]
    assert ls.h.shape == (3, 4, 2, 5, 6) and rnnlens.describe(model)[0].feature_shape == (2, 5, 6)
    np.testing.assert_allclose(ls.h, _np(model(x))[:, ::-1], rtol=1e-6, atol=1e-7)
    ls = rnnlens.trace(model, x, mask=mask)["conv"]
    last = lambda a: np.moveaxis(a, 2, -1)  # noqa: E731  (the reference is channels_last)
    ref = reference_conv_lstm(last(x), *_weights(layer), **_conv_kwargs(layer), mask=mask, go_backwards=True)
    _close(last(ls.h), ref["h"])
    _close(last(ls.c), ref["c"])
    _close(np.moveaxis(ls.gates.array, 3, -1), ref["gates"])
