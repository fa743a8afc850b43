"""TensorFlow objects people pass: opaque graphs (SavedModel directories and objects, TFSMLayer,
tf.function) refused with one clear error each; tf_keras (Keras 2) models converted in memory.

Oracle for tf_keras: tf_keras' own model cut at the recurrent layer (its own kernel), equal
within ``atol=1e-6`` (Keras 3's kernel on the converted weights), and c / gates against the
float64 NumPy reference (``rtol = atol = 1e-5``)."""

from __future__ import annotations

import numpy as np
import pytest

import rnnlens
from rnnlens.errors import UnsupportedModelError
from rnnlens.testing.reference import reference_rnn

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
X = np.random.default_rng(0).normal(size=(2, 5, 3)).astype("float32")
WAY_OUT = r"traced graph has no layer objects.*\.keras"


@pytest.fixture(scope="module")
def saved_model_dir(tmp_path_factory):  # type: ignore[no-untyped-def]
    if keras.backend.backend() != "tensorflow":
        pytest.skip("exporting a SavedModel needs Keras' TensorFlow backend")
    inp = keras.Input((5, 3))
    model = keras.Model(inp, keras.layers.LSTM(4)(inp))
    path = tmp_path_factory.mktemp("sm") / "exported"
    model.export(str(path), verbose=False)
    return path


def test_saved_model_directory_is_refused_not_missing(saved_model_dir) -> None:  # type: ignore[no-untyped-def]
    for call in (rnnlens.load_model, lambda p: rnnlens.trace(p, X), lambda p: rnnlens.trace(str(p), X)):
        with pytest.raises(UnsupportedModelError, match=r"SavedModel directory.*" + WAY_OUT):
            call(saved_model_dir)


def test_saved_model_objects_are_refused(saved_model_dir) -> None:  # type: ignore[no-untyped-def]
    loaded = tf.saved_model.load(str(saved_model_dir))
    with pytest.raises(UnsupportedModelError, match=r"loaded SavedModel.*" + WAY_OUT):
        rnnlens.trace(loaded, X)
    with pytest.raises(UnsupportedModelError, match=r"tf.function.*" + WAY_OUT):
        rnnlens.trace(loaded.serve, X)
    layer = keras.layers.TFSMLayer(str(saved_model_dir), call_endpoint="serve")
    with pytest.raises(UnsupportedModelError, match=r"TFSMLayer.*" + WAY_OUT):
        rnnlens.trace(layer, X)
    inp = keras.Input((5, 3))
    wrapped = keras.Model(inp, layer(inp))
    with pytest.raises(UnsupportedModelError, match=r"holds layer.*TFSMLayer"):
        rnnlens.describe(wrapped)


def test_tf_function_is_refused() -> None:
    with pytest.raises(UnsupportedModelError, match=r"tf.function.*" + WAY_OUT):
        rnnlens.trace(tf.function(lambda v: v), X)


tf_keras = pytest.importorskip("tf_keras")


def _tf_keras_model():  # type: ignore[no-untyped-def]
    inp = tf_keras.Input((None, 3))
    seq = tf_keras.layers.LSTM(4, return_sequences=True, recurrent_activation="hard_sigmoid", name="lstm")(
        inp
    )
    bi = tf_keras.layers.Bidirectional(tf_keras.layers.GRU(2, return_sequences=True), name="bigru")(seq)
    return tf_keras.Model(inp, tf_keras.layers.Dense(1, name="head")(bi)), inp, seq, bi


@pytest.mark.filterwarnings("ignore:.*hard_sigmoid")
def test_tf_keras_model_is_converted_and_computes_what_keras2_computes() -> None:
    model, inp, seq, bi = _tf_keras_model()
    before = [w.copy() for w in model.get_weights()]
    with pytest.warns(rnnlens.RnnLensWarning, match="hard_sigmoid"):  # once per conversion
        assert [s.name for s in rnnlens.describe(model)] == ["lstm", "bigru"]
    states = rnnlens.trace(model, X)
    own_seq = tf_keras.Model(inp, seq)(X).numpy()
    own_bi = tf_keras.Model(inp, bi)(X).numpy()
    np.testing.assert_allclose(states["lstm"].h, own_seq, rtol=0, atol=1e-6)
    got_bi = np.concatenate([states["bigru"].forward.h, states["bigru"].backward.h], axis=-1)
    np.testing.assert_allclose(got_bi, own_bi, rtol=0, atol=1e-6)
    cell = model.get_layer("lstm").cell
    k, rk, b = (w.numpy() for w in (cell.kernel, cell.recurrent_kernel, cell.bias))
    ref = reference_rnn(
        "lstm", X, k, rk, b, recurrent_activation=lambda z: np.clip(0.2 * z + 0.5, 0, 1)
    )  # Keras 2's
    np.testing.assert_allclose(states["lstm"].c, ref["c"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(states["lstm"].gates.array, ref["gates"], rtol=1e-5, atol=1e-5)
    for a, w in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, w)


def test_tf_keras_subclassed_and_bare_layers_are_refused_with_the_way_out() -> None:
    class Sub(tf_keras.Model):
        def __init__(self):  # type: ignore[no-untyped-def]
            super().__init__()
            self.rnn = tf_keras.layers.LSTM(2)

        def call(self, x):  # type: ignore[no-untyped-def]
            return self.rnn(x)

    sub = Sub()
    sub(X)
    with pytest.raises(
        UnsupportedModelError, match=r"subclassed tf_keras.*Rebuild the class with `import keras`"
    ):
        rnnlens.trace(sub, X)
    with pytest.raises(UnsupportedModelError, match=r"tf_keras LSTM.*rnnlens traces a model"):
        rnnlens.trace(tf_keras.layers.LSTM(2), X)
